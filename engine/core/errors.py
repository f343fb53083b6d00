"""Errors that mean "the input cannot work" (a message for the user, exit code 2), not a bug.

Each module that can refuse its input defines its own error class (``ProfileError``,
``ModelError``, ``TableError``...); ``RunError`` is for what no single module owns: the run
directory, a finished run's products, a backend that cannot run on this machine.
"""


class RunError(RuntimeError):
    """The run cannot go on; the message says why and what to do."""
