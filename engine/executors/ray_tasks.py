"""The ``ray`` executor: work items on a pool of Ray actors, on this machine or a cluster.

Scoring: ``workers`` actors each build the scorer once (``factory(*args)``: model, calibration
batches, database) with ``threads`` torch threads, then serve requests.  A batch of allocations is
split into contiguous chunks exactly as ``processes.PooledScorer`` splits it (``_split``), chunk i
to actor i, and the losses come back in the batch's order; ``accept`` goes to every actor.  So the
search sees what a single scorer would have returned, whatever the executor.

Mapping (database builds): ``map(function, args, items)`` runs ``function(*args, item)`` on the
same kind of actors, an item to whichever actor is free, and yields the results in the order of
the items.

Where Ray runs (``[ray]`` in the profile, ``engine.core.profile.RayConfig``):

    address = ""                 a local Ray started for this scorer or map, with exactly
                                 ``workers`` CPUs, shut down after (or the Ray this process has
                                 already started, left running)
    address = "auto"             the cluster this machine belongs to (``ray start``)
    address = "ray://host:port"  a cluster through Ray Client

Data: workers read the run directory themselves (the model, the data, ``db/``), so it must lie on
storage every node mounts at the same path (docs/cluster.md).  Before work starts each actor
checks that it can read the folders it is given (``shared``) and fails with ``UnreadablePath``
naming the folder and the node; the parent turns that into a ``RunError``, and gives up with a
``RunError`` when the cluster cannot place the actors within ``START_TIMEOUT`` seconds: a missing
mount or a too small cluster is an error, never a hang.

``import ray`` happens only here, and only when a ``RayExecutor`` is opened.
"""

from __future__ import annotations

import os
import resource
import socket
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from engine.core.errors import RunError
from engine.core.profile import RayConfig
from engine.executors.processes import WorkerError, _split

START_TIMEOUT = 120.0  # seconds Ray may take to place every worker before the run stops with an error
MISSING_RAY = "executor 'ray' needs Ray: pip install -e .[ray] (or pip install 'ray>=2.40')"


class UnreadablePath(RunError):
    """A Ray worker cannot read a folder the run needs (not mounted on its node)."""


def unreadable(folders: Sequence[str]) -> list[str]:
    """The folders of ``folders`` this process cannot list and read."""
    return [folder for folder in folders if not (os.path.isdir(folder) and os.access(folder, os.R_OK | os.X_OK))]


def _import_ray():
    try:
        import ray
    except ImportError:
        raise RunError(MISSING_RAY) from None
    return ray


class _Worker:
    """One Ray actor: checks the shared folders, then builds a scorer once or runs work items."""

    def start(self, threads: int, shared: Sequence[str]) -> str:
        from engine.runtime.execution import set_threads

        missing = unreadable(shared)
        if missing:
            raise UnreadablePath(
                f"the Ray worker on node {socket.gethostname()} cannot read {missing[0]}: put the run directory "
                "on storage every node mounts at the same path (see docs/cluster.md)"
            )
        set_threads(threads)
        self.scorer = None
        return socket.gethostname()

    def build(self, factory: Callable[..., Any], args: tuple) -> None:
        self.scorer = factory(*args)

    def score(self, allocations: list[list[str]], bound: float) -> list[float]:
        return self.scorer.score(allocations, bound)

    def accept(self, levels: list[str]) -> None:
        self.scorer.accept(levels)

    def call(self, function: Callable[..., Any], args: tuple, item: Any) -> Any:
        return function(*args, item)

    def peak_rss(self) -> int:
        """This worker's peak resident memory in bytes (Linux reports kilobytes)."""
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RayExecutor:
    """``workers`` Ray actors with ``threads`` threads each, placed by the Ray at ``cluster.address``."""

    name = "ray"

    def __init__(
        self, workers: int, threads: int, cluster: RayConfig | None = None, shared: Sequence[str] = (),
        start_timeout: float = START_TIMEOUT,
    ):
        self.ray = _import_ray()
        self.start_timeout = start_timeout
        self.workers, self.threads = workers, threads
        self.cluster = cluster or RayConfig()
        self.shared = [str(Path(folder).resolve()) for folder in shared]
        self.peak_rss_bytes: list[int] = []  # per worker, recorded when its actors are stopped
        if self.cluster.shared_path:
            root = Path(self.cluster.shared_path).resolve()
            outside = [folder for folder in self.shared if not Path(folder).is_relative_to(root)]
            if outside:
                raise RunError(
                    f"ray.shared_path: the run directory {outside[0]} is not inside the shared folder {root}, "
                    "so workers on other nodes cannot read it; set run.out_dir to a folder under it"
                )

    # ------------------------------------------------------------------ Ray and the actors
    def _connect(self) -> bool:
        """Connect to (or start) Ray; True if this executor started it and must shut it down."""
        ray = self.ray
        if ray.is_initialized():
            return False
        options = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
        try:
            if self.cluster.address:
                ray.init(address=self.cluster.address, logging_level="ERROR", log_to_driver=False)
            else:
                ray.init(address="local", num_cpus=self.workers, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = self.cluster.address or "a local Ray"
            raise RunError(f"ray.address {self.cluster.address!r}: cannot connect to {where}: {exc}") from None
        return True

    def _start_actors(self) -> tuple[list, bool]:
        ray = self.ray
        owned = self._connect()
        actor_class = ray.remote(num_cpus=1)(_Worker)
        actors = [actor_class.remote() for _ in range(self.workers)]
        try:
            started = [actor.start.remote(self.threads, self.shared) for actor in actors]
            ready, _ = ray.wait(started, num_returns=len(started), timeout=self.start_timeout)
            if len(ready) < len(started):
                free = ray.available_resources().get("CPU", 0)
                raise RunError(
                    f"Ray placed {len(ready)} of {self.workers} workers within "
                    f"{self.start_timeout:g} s (1 CPU each; {free:g} CPUs free on the cluster): lower "
                    "search.workers / database.workers or add nodes"
                )
            self._get(started)
        except BaseException:
            self._stop(actors, owned, record=False)
            raise
        return actors, owned

    def _get(self, refs):
        """``ray.get`` with a worker's error re-raised as the user's error it is, or as a WorkerError."""
        ray = self.ray
        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, (RunError, ValueError)):  # the user's to fix: its message, no traceback
                raise cause from None
            raise WorkerError(f"a Ray worker failed:\n{exc}") from None
        except ray.exceptions.RayActorError as exc:
            raise WorkerError(f"a Ray worker died: {exc}") from None

    def _stop(self, actors: list, owned: bool, record: bool = True) -> None:
        ray = self.ray
        if record and actors:
            try:
                self.peak_rss_bytes = ray.get([actor.peak_rss.remote() for actor in actors], timeout=30)
            except Exception:  # a dead worker has no memory to report
                self.peak_rss_bytes = []
        for actor in actors:
            ray.kill(actor)
        if owned:
            ray.shutdown()

    # ------------------------------------------------------------------ the executor seam
    def scorer(self, factory: Callable[..., Any], args: tuple) -> RayScorer:
        actors, owned = self._start_actors()
        try:
            self._get([actor.build.remote(factory, args) for actor in actors])
        except BaseException:
            self._stop(actors, owned, record=False)
            raise
        return RayScorer(self, actors, owned)

    def map(self, function: Callable[..., Any], args: tuple, items: list) -> Iterator[Any]:
        ray = self.ray
        actors, owned = self._start_actors()
        try:
            free, in_flight, results = list(actors), {}, {}  # in flight: reference -> (item index, actor)
            submitted = yielded = 0
            while yielded < len(items):
                while free and submitted < len(items):
                    actor = free.pop(0)
                    in_flight[actor.call.remote(function, args, items[submitted])] = (submitted, actor)
                    submitted += 1
                if yielded in results:
                    yield results.pop(yielded)
                    yielded += 1
                    continue
                done, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in done:
                    index, actor = in_flight.pop(ref)
                    results[index] = self._get(ref)
                    free.append(actor)
        finally:
            self._stop(actors, owned)


class RayScorer:
    """The scorer of a pool of Ray actors: ``score`` in the batch's order, ``accept`` to all."""

    def __init__(self, executor: RayExecutor, actors: list, owned: bool):
        self._executor, self._actors, self._owned = executor, actors, owned

    def score(self, allocations: list[list[str]], bound: float) -> list[float]:
        chunks = _split(allocations, len(self._actors))
        refs = [actor.score.remote(chunk, bound) for actor, chunk in zip(self._actors, chunks) if chunk]
        return [loss for losses in self._executor._get(refs) for loss in losses]

    def accept(self, levels: list[str]) -> None:
        self._executor._get([actor.accept.remote(levels) for actor in self._actors])

    def close(self) -> None:
        if self._actors:
            actors, self._actors = self._actors, []
            self._executor._stop(actors, self._owned)

    def __enter__(self) -> RayScorer:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()
