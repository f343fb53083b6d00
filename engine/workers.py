"""What a scoring worker process builds: the same scorer the main process would use.

``build_scorer(run_dir)`` is started in a fresh interpreter by ``engine.pool``; it reads the run's
own ``profile.toml``, loads the model, the calibration batches and the database once, and returns
a ``ModelScorer``.  Everything is derived from the profile and its seed, so every worker scores
exactly what the main process would.
"""

from __future__ import annotations

from pathlib import Path


def build_scorer(run_dir: str):
    from engine.config import load_profile
    from engine.pipeline import Run
    from engine.stages import load_database, scorer_for

    run_dir_path = Path(run_dir)
    profile = load_profile(run_dir_path / "profile.toml")
    run = Run(profile, run_dir_path, log=_NullLog())
    load_database(run)
    return scorer_for(run)


class _NullLog:
    """Workers never write the run log; only the main process does."""

    def emit(self, *_args, **_kwargs) -> None:
        return None
