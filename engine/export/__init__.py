"""What a run hands the user: result.json (``result``), the take-away files (``files``) and the
GMP schedule the recipes and ``spdy finetune`` share (``schedule``)."""
