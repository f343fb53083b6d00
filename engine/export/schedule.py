"""The gradual magnitude pruning (GMP) schedule: how sparse each layer is at each epoch.

Zhu & Gupta's cubic schedule (2017), in epochs: a layer pruned from ``s_i`` to ``s_f`` between
``t0 = start_epoch`` and ``t0 + n dt = end_epoch``, updated every ``dt = update_frequency`` epochs,
has at an update epoch t

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n dt))^3,        t0 <= t <= t0 + n dt,

so it starts at ``s_i``, prunes fastest at first and reaches exactly ``s_f`` at ``end_epoch``.
This is SparseML's ``GMPruningModifier`` with ``inter_func: cubic``: its interpolation
``s_i + (s_f - s_i) * (1 - (1 - x)^3)`` with x = (t - t0) / (n dt) is the same polynomial.

Updates happen at the *start* of epochs ``t0, t0 + dt, t0 + 2 dt, ...`` before ``end_epoch``, and at
the start of ``end_epoch`` itself (SparseML: "by the start of end_epoch ... set the final
sparsity"); the masks then stay on while training continues to ``num_epochs``.  So
``end_epoch < num_epochs``: otherwise training would stop before the final sparsity is applied.

A layer's own initial sparsity is ``min(init_sparsity, s_f)`` for unstructured levels, and
``s_f`` for N:M levels (SparseML's N:M masks accept no other target), so such layers hold their
final pattern from ``start_epoch`` on.  ``DEFAULT`` is the one place the defaults live: the
recipe ``spdy run`` exports (``recipe.yaml``) and ``spdy finetune`` both read it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from engine.core.grid import level_sparsity, parse_nm


@dataclass(frozen=True)
class GMPSchedule:
    """Whole-epoch GMP schedule; every field is a SparseML recipe variable of the same meaning."""

    init_sparsity: float = 0.05
    start_epoch: int = 0  # pruning_start_epoch
    end_epoch: int = 10  # pruning_end_epoch: the final sparsity holds from the start of this epoch
    num_epochs: int = 15  # training epochs in all (EpochRangeModifier end_epoch)
    update_frequency: int = 1  # pruning_update_frequency, in epochs

    def __post_init__(self):
        for name in ("start_epoch", "end_epoch", "num_epochs", "update_frequency"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be a whole number of epochs, got {value!r}")
        if not 0 <= self.start_epoch < self.end_epoch < self.num_epochs:
            raise ValueError(
                f"need 0 <= start_epoch < end_epoch < num_epochs, got start_epoch {self.start_epoch}, "
                f"end_epoch {self.end_epoch}, num_epochs {self.num_epochs} (the final sparsity is set at the "
                "start of end_epoch, so at least one epoch must follow it)"
            )
        if self.update_frequency < 1:
            raise ValueError(f"update_frequency must be at least 1 epoch, got {self.update_frequency}")
        if not 0.0 <= self.init_sparsity < 1.0:
            raise ValueError(f"init_sparsity must be in [0, 1), got {self.init_sparsity}")

    @classmethod
    def for_epochs(cls, num_epochs: int, end_epoch: int | None = None, **fields) -> GMPSchedule:
        """``num_epochs`` epochs with pruning ending where the default does in proportion
        (10 of 15: two thirds), unless ``end_epoch`` is given."""
        if end_epoch is None:
            start = fields.get("start_epoch", DEFAULT.start_epoch)
            end_epoch = round(num_epochs * DEFAULT.end_epoch / DEFAULT.num_epochs)
            end_epoch = min(max(end_epoch, start + 1), num_epochs - 1)
        return cls(num_epochs=num_epochs, end_epoch=end_epoch, **fields)

    def as_dict(self) -> dict:
        return asdict(self)

    def update_epochs(self) -> list[int]:
        """Epochs at whose start the masks are recomputed: start, start + dt, ..., and end."""
        epochs = list(range(self.start_epoch, self.end_epoch, self.update_frequency))
        return epochs + [self.end_epoch]

    def layer_init(self, level: str) -> float:
        """The sparsity a layer at ``level`` starts from (see the module docstring)."""
        final = level_sparsity(level)
        return final if parse_nm(level) else min(self.init_sparsity, final)

    def sparsity(self, epoch: int, level: str) -> float:
        """The sparsity of a layer at ``level`` during epoch ``epoch``: s_t of the latest update epoch
        t <= ``epoch`` (0 before start_epoch; the final sparsity from end_epoch on)."""
        final = level_sparsity(level)
        updates = [t for t in self.update_epochs() if t <= epoch]
        if final == 0.0 or not updates:
            return 0.0
        return cubic(updates[-1], self.start_epoch, self.end_epoch, self.layer_init(level), final)


def cubic(t: float, t0: float, t_end: float, s_i: float, s_f: float) -> float:
    """s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t_end - t0))^3, with t clamped to [t0, t_end]."""
    progress = min(max((t - t0) / (t_end - t0), 0.0), 1.0)
    return s_f + (s_i - s_f) * (1.0 - progress) ** 3


DEFAULT = GMPSchedule()
