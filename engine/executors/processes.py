"""The ``processes`` executor: work items in worker processes on this machine.

Scoring: each worker builds its own scorer once (model, calibration batches, database) by calling
``factory(*args)`` in the child, then serves requests: score a list of allocations against a
bound, or take note of a new best allocation.  ``PooledScorer`` splits a batch of allocations
into contiguous chunks, one per worker, and returns the losses in the original order, so the
search sees exactly what a single scorer would have returned.

Workers are started with the ``spawn`` method (a fresh interpreter: no inherited thread pools,
which ``fork`` would leave in an undefined state) and use ``threads`` torch threads each.

Mapping (database builds): ``map(function, args, items)`` runs ``function(*args, item)`` in a
pool of such workers and yields the results in the order of ``items``.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import traceback
from typing import Any, Callable, Iterator


def _worker(connection, factory: Callable[..., Any], args: tuple, threads: int) -> None:  # pragma: no cover - child
    import torch

    torch.set_num_threads(threads)
    try:
        scorer = factory(*args)
        connection.send(("ready", None))
    except BaseException:  # report any failure to the parent instead of dying silently
        connection.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            request, payload = connection.recv()
        except EOFError:
            return
        try:
            if request == "score":
                connection.send(("ok", scorer.score(*payload)))
            elif request == "accept":
                scorer.accept(payload)
            elif request == "stop":
                return
        except BaseException:
            connection.send(("error", traceback.format_exc()))


class WorkerError(RuntimeError):
    """A worker failed; the message carries its traceback."""


class PooledScorer:
    def __init__(self, factory: Callable[..., Any], args: tuple, workers: int, threads_per_worker: int = 1):
        context = mp.get_context("spawn")
        self._connections = []
        self._processes = []
        for _ in range(workers):
            parent, child = context.Pipe()
            process = context.Process(target=_worker, args=(child, factory, args, threads_per_worker), daemon=True)
            process.start()
            self._connections.append(parent)
            self._processes.append(process)
        for connection in self._connections:
            self._receive(connection)

    @staticmethod
    def _receive(connection):
        status, payload = connection.recv()
        if status == "error":
            raise WorkerError(f"a scoring worker failed:\n{payload}")
        return payload

    def score(self, allocations: list[list[str]], bound: float) -> list[float]:
        chunks = _split(allocations, len(self._connections))
        busy = []
        for connection, chunk in zip(self._connections, chunks):
            if chunk:
                connection.send(("score", (chunk, bound)))
                busy.append(connection)
        losses: list[float] = []
        for connection in busy:
            losses.extend(self._receive(connection))
        return losses

    def accept(self, levels: list[str]) -> None:
        for connection in self._connections:
            connection.send(("accept", levels))

    def close(self) -> None:
        for connection, process in zip(self._connections, self._processes):
            try:
                connection.send(("stop", None))
            except (BrokenPipeError, OSError):
                pass
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()

    def __enter__(self) -> PooledScorer:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


def _split(items: list, parts: int) -> list[list]:
    """Contiguous chunks, sizes differing by at most one, in order."""
    size, extra = divmod(len(items), parts)
    chunks, start = [], 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        chunks.append(items[start:end])
        start = end
    return chunks


def _set_threads(threads: int) -> None:  # pragma: no cover - child
    from engine.runtime.execution import set_threads

    set_threads(threads)


class ProcessesExecutor:
    """``workers`` spawned processes with ``threads`` threads each."""

    name = "processes"

    def __init__(self, workers: int, threads: int):
        self.workers, self.threads = workers, threads

    def scorer(self, factory: Callable[..., Any], args: tuple) -> PooledScorer:
        return PooledScorer(factory, args, self.workers, self.threads)

    def map(self, function: Callable[..., Any], args: tuple, items: list) -> Iterator[Any]:
        context = mp.get_context("spawn")
        with context.Pool(self.workers, initializer=_set_threads, initargs=(self.threads,)) as pool:
            yield from pool.imap(functools.partial(function, *args), items)
