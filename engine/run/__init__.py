"""A run: its directory, its context, its stages in order, and the workers that execute its items.

pipeline (the stage table and ``execute``), stages/ (one module per stage), context (what the
stages share), directory (create or reopen a run directory), products (search.json,
baselines.json, final.safetensors), workers (work items rebuilt from the run directory), runlog
(reading a run log back for ``spdy inspect`` and the TUI).
"""
