"""Executors: where a run's independent work items execute, looked up by name.

Two kinds of work are independent item by item:

* search evaluations: a scorer built once per worker (model, calibration batches, database),
  scoring batches of allocations; ``executor.scorer(factory, args)`` returns one with
  ``score``, ``accept`` and ``close``, the losses of a batch in the batch's order;
* database builds: one layer at a time; ``executor.map(function, args, items)`` yields
  ``function(*args, item)`` for every item, in the order of the items.

So the search trajectory and the database never depend on the executor or on the number of
workers.  Timing is not work for an executor: it always runs alone on the target machine.

    inline      this process                         (engine.executors.inline)
    processes   spawned worker processes, this host  (engine.executors.processes)

Adding an executor: a module with a class taking ``(workers, threads)`` with ``scorer``, ``map``
and a ``name``, one line in ``EXECUTORS``, and its name in the profile's choices.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol

from engine.executors.inline import InlineExecutor
from engine.executors.processes import ProcessesExecutor


class Executor(Protocol):
    name: str
    workers: int

    def scorer(self, factory: Callable[..., Any], args: tuple) -> Any: ...

    def map(self, function: Callable[..., Any], args: tuple, items: list) -> Iterator[Any]: ...


EXECUTORS: dict[str, type] = {"inline": InlineExecutor, "processes": ProcessesExecutor}


def open_executor(name: str, workers: int, threads: int) -> Executor:
    """The executor ``name`` with ``workers`` workers sharing ``threads`` threads."""
    if name == "auto":
        name = "inline" if workers == 1 else "processes"
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
    return EXECUTORS[name](workers, max(1, threads // workers))
