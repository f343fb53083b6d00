"""The ``inline`` executor: every work item in this process, one after the other."""

from __future__ import annotations

from typing import Any, Callable, Iterator


class InlineScorer:
    """The scorer ``factory(*args)`` built here, with ``close()`` restoring the dense weights."""

    def __init__(self, scorer):
        self._scorer = scorer

    def __getattr__(self, name: str):
        return getattr(self._scorer, name)

    def close(self) -> None:
        self._scorer.stitcher.restore()


class InlineExecutor:
    name = "inline"

    def __init__(self, workers: int = 1, threads: int = 1):
        self.workers, self.threads = 1, threads

    def scorer(self, factory: Callable[..., Any], args: tuple) -> InlineScorer:
        return InlineScorer(factory(*args))

    def map(self, function: Callable[..., Any], args: tuple, items: list) -> Iterator[Any]:
        for item in items:
            yield function(*args, item)  # a generator function streams its results as they come
