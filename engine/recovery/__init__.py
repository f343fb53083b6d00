"""Recovery after one-shot pruning: ``spdy finetune`` (gradual magnitude pruning with fine-tuning
or distillation), its masks schedule, training data and checkpoints."""
