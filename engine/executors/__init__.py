"""Executors: where a run's independent work items execute, looked up by name.

Two kinds of work are independent item by item:

* search evaluations: a scorer built once per worker (model, calibration batches, database),
  scoring batches of allocations; ``executor.scorer(factory, args)`` returns one with
  ``score``, ``accept`` and ``close``, the losses of a batch in the batch's order;
* database builds: one layer at a time; ``executor.map(function, args, items)`` yields
  ``function(*args, item)`` for every item, in the order of the items.

So the search trajectory and the database never depend on the executor or on the number of
workers.  Timing is not work for an executor: it always runs alone on the target machine.

    inline      this process                                   (engine.executors.inline)
    processes   spawned worker processes, this host            (engine.executors.processes)
    ray         Ray actors, a local Ray or a cluster ([ray])   (engine.executors.ray_tasks)

``ray`` is imported only when a Ray executor is opened (it is an optional dependency).

Adding an executor: a module with a class taking ``(workers, threads)`` with ``scorer``, ``map``
and a ``name``, one line in ``EXECUTORS``, and its name in the profile's choices.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol, Sequence

from engine.core.profile import RayConfig
from engine.executors.inline import InlineExecutor
from engine.executors.processes import ProcessesExecutor
from engine.executors.ray_tasks import RayExecutor


class Executor(Protocol):
    name: str
    workers: int

    def scorer(self, factory: Callable[..., Any], args: tuple) -> Any: ...

    def map(self, function: Callable[..., Any], args: tuple, items: list) -> Iterator[Any]: ...


EXECUTORS: dict[str, type] = {"inline": InlineExecutor, "processes": ProcessesExecutor, "ray": RayExecutor}


def open_executor(
    name: str, workers: int, threads: int, cluster: RayConfig | None = None, shared: Sequence[str] = (),
) -> Executor:
    """The executor ``name`` with ``workers`` workers sharing ``threads`` threads.

    ``cluster`` (the profile's ``[ray]``) and ``shared`` (folders every worker must read: the run
    directory) matter only to executors that may run on other machines (``ray``)."""
    if name == "auto":
        name = "inline" if workers == 1 else "processes"
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
    if name == "ray":
        return RayExecutor(workers, max(1, threads // workers), cluster, shared)
    return EXECUTORS[name](workers, max(1, threads // workers))
