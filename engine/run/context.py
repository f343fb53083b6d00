"""The run context: what the stages of a run share, each loaded on first use and then kept.

A stage never hands a value to a later stage through a side channel: it writes its product into
the run directory, and the context reads it back when a later stage (or a worker, a benchmark,
``spdy verify``) first asks for it:

    ctx.loaded, ctx.data     the model with its traced layers, and the run's data
    ctx.table                timings.json (set directly by the timings stage that measured it)
    ctx.database             db/
    ctx.search_record        search.json
    ctx.baselines_record     baselines.json
    ctx.final_model          final.safetensors loaded into a copy of the model
    ctx.backend              the target hardware (``engine.backends``)

and offers the services built from them: ``problem()``, ``scorer()``, ``heldout_quality()``,
``timing_inputs()``, ``timed_layers``, ``stitcher``.  ``RunContext.from_dir(run_dir)`` builds the
context of an existing run from its own ``profile.toml``; that is how scoring workers, ``spdy
verify``, ``spdy finetune`` and the benchmarks see exactly what the run saw.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from engine.backends import Backend, get_backend
from engine.core.events import NullLog
from engine.core.profile import Profile, load_profile
from engine.model.data import trimmed_by_length
from engine.model.losses import heldout_metrics, loss_function, primary_metric
from engine.model.sources import load, trace_layers
from engine.run import products
from engine.search.budget import Problem, make_problem
from engine.search.scoring import ModelScorer
from engine.timing.table import TimingTable, load_table


@dataclass(eq=False)
class RunContext:
    profile: Profile
    run_dir: Path
    log: Any = field(default_factory=NullLog)  # an EventLog, or NullLog where nothing is logged
    started: float = field(default_factory=time.time)

    @classmethod
    def from_dir(cls, run_dir: str | Path, log=None) -> RunContext:
        """The context of an existing run, from its own ``profile.toml``."""
        run_dir = Path(run_dir)
        return cls(load_profile(run_dir / "profile.toml"), run_dir, log if log is not None else NullLog())

    # ------------------------------------------------------------------ products, loaded on first use
    @cached_property
    def _model_and_data(self):
        return load(self.profile)

    @property
    def loaded(self):
        return self._model_and_data[0]

    @property
    def data(self):
        return self._model_and_data[1]

    @cached_property
    def table(self) -> TimingTable:
        return load_table(self.run_dir / "timings.json")

    @cached_property
    def database(self):
        from engine.database.store import Database

        return Database.open(self.run_dir / "db")

    @cached_property
    def search_record(self) -> dict | None:
        return products.read_search(self.run_dir)

    @cached_property
    def baselines_record(self) -> dict | None:
        return products.read_baselines(self.run_dir)

    @cached_property
    def final_model(self) -> torch.nn.Module:
        return products.load_final(self.run_dir, self.loaded.model)

    @cached_property
    def backend(self) -> Backend:
        return get_backend(self.profile.hardware.backend)

    @cached_property
    def stitcher(self):
        """The run's one Stitcher, created while the model is still dense.

        Every stitching in this process goes through it, so no second stitcher ever mistakes
        another's stitched weights for the dense ones; callers ``restore()`` when they are done."""
        from engine.database.stitch import Stitcher

        return Stitcher(self.loaded.model, self.loaded.layer_names, self.database)

    @cached_property
    def timed_layers(self) -> list:
        """The layers with the input shapes of the timing batch (hardware.batch_size samples)."""
        traced = {layer.name: layer for layer in trace_layers(self.loaded, self.timing_inputs())}
        return [traced[layer.name] for layer in self.loaded.layers]

    # ------------------------------------------------------------------ services
    def timing_inputs(self):
        """``hardware.batch_size`` real calibration samples: the batch the speedup is promised for.

        Taken from the calibration batches in order (repeated if there are fewer samples)."""
        wanted = self.profile.hardware.batch_size
        parts = [batch.inputs for batch in self.data.calibration]
        while sum(_samples(part) for part in parts) < wanted:
            parts = parts + parts
        if isinstance(parts[0], dict):
            return {key: torch.cat([part[key] for part in parts])[:wanted] for key in parts[0]}
        return torch.cat(parts)[:wanted]

    def problem(self, target: float | None = None) -> Problem:
        """The DP problem: the table (restricted to the model's prunable layers), target (the profile's
        unless given: the closed loop searches at a tighter one) and skips."""
        table = self.table
        if table.names != self.loaded.layer_names:
            table = table.subset(self.loaded.layer_names)
        from engine.database.store import Database

        # the prior ranks mixed (int8 and fp32) choices by the database's errors, once it is built
        ranked = self.profile.grid.int8 and Database.is_built(self.run_dir / "db")
        errors = self.database.errors() if ranked else None
        return make_problem(table, target or self.profile.search.target, self.profile.search.skip, errors)

    @cached_property
    def reconstruction_inputs(self) -> list:
        """What the database's H (and the sequential rebuild) are collected over: the reconstruction
        samples, with ``data.trim_padding`` regrouped shortest first and cut to each batch's longest
        sample (``trimmed_by_length``): padding never reaches H, so the dense pass need not compute it."""
        batches = self.data.reconstruction
        if self.profile.data.trim_padding:
            batches = trimmed_by_length(batches)
        return [batch.inputs for batch in batches]

    def scorer(self) -> ModelScorer:
        """A scorer of allocations by calibration loss, on this process's stitcher."""
        loaded, data, search = self.loaded, self.data, self.profile.search
        loss_fn = loss_function(search.loss, loaded.task, data.has_labels)
        batches = trimmed_by_length(data.calibration) if self.profile.data.trim_padding else data.calibration
        return ModelScorer(
            loaded, batches, loss_fn, self.stitcher, loaded.layer_names, search.early_abandon, search.reuse_activations
        )

    @cached_property
    def _heldout_dense(self) -> torch.Tensor:
        if "stitcher" in self.__dict__:  # a stitched model is made dense again; no database needed otherwise
            self.stitcher.restore()
        return self._heldout_outputs(self.loaded.model)

    def _heldout_outputs(self, model) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([self.loaded.run_model(model, batch.inputs) for batch in self.data.heldout])

    def heldout_quality(self, levels: list[str], model=None) -> dict[str, float]:
        """The held-out metrics (``engine.model.losses.heldout_metrics``) of the model at ``levels``
        (or of ``model``): for encoders mean and 10th-percentile cosine to the dense embeddings and
        neighbour recall@10; for classifiers accuracy and agreement with dense.  Empty without a
        held-out set."""
        loaded, data = self.loaded, self.data
        if not data.heldout:
            return {}
        dense = self._heldout_dense
        labels = torch.cat([batch.labels for batch in data.heldout]) if data.has_labels else None
        if model is None:
            self.stitcher.apply(dict(zip(loaded.layer_names, levels)))
            candidate = self._heldout_outputs(loaded.model)
            self.stitcher.restore()
        else:
            candidate = self._heldout_outputs(model)
        return heldout_metrics(loaded.task, candidate, dense, labels)

    def heldout_metric(self, levels: list[str], model=None) -> float:
        """The primary held-out number of ``heldout_quality``: mean cosine to dense for encoders,
        top-1 accuracy (or agreement with dense) for classifiers; nan without a held-out set."""
        return primary_metric(self.heldout_quality(levels, model))


def _samples(inputs) -> int:
    return int(next(iter(inputs.values())).shape[0] if isinstance(inputs, dict) else inputs.shape[0])
