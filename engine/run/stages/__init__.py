"""The stages of ``spdy run``, one module each, in the order the run executes them.

Each stage module has ``is_done(ctx)`` (its product in the run directory is valid), ``make(ctx)``
(produce it) and may have ``after_skip(ctx)`` (what to check when the product was already there).
``engine.run.pipeline.STAGES`` lists them; nothing else calls them.
"""

ORDER = ("timings", "database", "search", "baselines", "final", "verify", "export")  # the names, in run order
