"""What a fine-tuning was asked for: the options, their defaults and the checks on them.

``Options`` is what the user chose (None: the default, or when resuming what was chosen before);
``resolve`` turns it into concrete settings.  Two ways to start:

    one-shot   from the run's one-shot reconstructed weights (final.safetensors for the SPDY
               allocation, the database's cells for a baseline), the masks fixed from the start:
               training only recovers what the one-shot pruning lost (the default);
    gradual    from the dense model, magnitude masks on the cubic schedule (``engine.recovery.gmp``).

The student trains in the model's eval mode unless ``--dropout``: distillation matches a teacher
that runs without dropout, and dropout's noise on the student only hides what it has to fit (the
MiniLM 1.5x recipe, 5 epochs: 0.9779 held-out cosine and 0.849 recall@10 against 0.9695 and
0.819 with dropout; docs/results.md).  Eval mode also keeps normalisation layers on their running
statistics; their weights still train.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from engine.core.errors import RunError
from engine.core.learning_rate import LR_DECAYS, rate_factor
from engine.export.schedule import DEFAULT, GMPSchedule

DISTILLATION_LOSSES = ("kl", "cosine", "mse")
LOSS_CHOICES = ("auto", "cross-entropy", *DISTILLATION_LOSSES)
START_CHOICES = ("one-shot", "gradual")
PRECISIONS = ("fp32", "bf16")  # of the training forward and backward (weights, Adam and the loss stay fp32)
NATIVE_BF16 = ("avx512_bf16", "amx_tile")  # CPU flags of a bf16 dot product in hardware
STEP_EVENTS_PER_EPOCH = 20  # at most this many "step" events per epoch in the log


@dataclass(frozen=True)
class Options:
    """What the user chose; None means "the default" (or, when resuming, what was chosen before)."""

    allocation: str = "spdy"
    start: str | None = None  # one-shot | gradual
    epochs: int | None = None
    pruning_end: int | None = None
    init_sparsity: float | None = None
    update_frequency: int | None = None
    loss: str | None = None
    lr: float | None = None
    batch_size: int | None = None
    train_samples: int | None = None  # 0 = all
    data: str | None = None
    hidden_weight: float | None = None  # lambda of engine.recovery.hidden (0: the output loss alone)
    lr_decay: str | None = None  # constant | cosine (over all steps of the fine-tuning)
    precision: str | None = None  # fp32 | bf16 (autocast of the forward passes)
    group_by_length: bool | None = None  # batches of sentences of about one length (training_data.epoch_batches)
    add_docstrings: int | None = None  # extra training sentences from the installed packages' docstrings (0: none)
    dropout: bool | None = None  # train in the model's train mode (dropout on); off: eval mode throughout
    threads: int | None = None  # not part of what the result means: may change on resume


def defaults(profile) -> dict:
    """Schedule defaults from ``engine.export.schedule.DEFAULT``; Adam at 5e-5 for transformers, 1e-3 otherwise."""
    transformer = profile.model.source in ("minilm", "hf")
    return {
        "allocation": "spdy", "start": "one-shot", "epochs": DEFAULT.num_epochs, "pruning_end": None,
        "init_sparsity": DEFAULT.init_sparsity, "update_frequency": DEFAULT.update_frequency,
        "loss": "auto", "lr": 5e-5 if transformer else 1e-3, "batch_size": 32, "train_samples": 0, "data": "",
        "hidden_weight": 0.0, "lr_decay": "constant", "precision": "fp32", "group_by_length": True,
        "add_docstrings": 0, "dropout": False, "threads": profile.hardware.threads,
    }


def resolve(options: Options, stored: dict | None, profile, out: Path) -> dict:
    """Concrete settings: given options, else (resuming) the stored ones, else the defaults.

    Resuming with a given option that differs from the stored one is refused."""
    chosen_defaults = defaults(profile)
    if stored is not None:
        # fine-tunings from before --start, --hidden-weight, --lr-decay, --precision, --group-by-length,
        # --add-docstrings and --dropout existed: what they ran
        stored = {"start": "gradual", "hidden_weight": 0.0, "lr_decay": "constant", "precision": "fp32",
                  "group_by_length": False, "add_docstrings": 0, "dropout": True, **stored}
    settings, differ = {}, []
    for field in fields(Options):
        given = getattr(options, field.name)
        before = (stored or {}).get(field.name, chosen_defaults[field.name]) if stored is not None else None
        if stored is not None and given is not None and given != before and field.name != "threads":
            differ.append(f"--{field.name.replace('_', '-')} {given} (was {before})")
        settings[field.name] = given if given is not None else (before if stored is not None else chosen_defaults[field.name])
    if differ:
        raise RunError(f"cannot resume {out}: it was started with other settings: {'; '.join(differ)}")
    if settings["start"] not in START_CHOICES:
        raise RunError(f"--start must be one of {', '.join(START_CHOICES)}, got {settings['start']!r}")
    if settings["loss"] not in LOSS_CHOICES:
        raise RunError(f"--loss must be one of {', '.join(LOSS_CHOICES)}, got {settings['loss']!r}")
    if settings["lr_decay"] not in LR_DECAYS:
        raise RunError(f"--lr-decay must be one of {', '.join(LR_DECAYS)}, got {settings['lr_decay']!r}")
    if settings["precision"] not in PRECISIONS:
        raise RunError(f"--precision must be one of {', '.join(PRECISIONS)}, got {settings['precision']!r}")
    if not settings["hidden_weight"] >= 0:
        raise RunError(f"--hidden-weight must be at least 0, got {settings['hidden_weight']}")
    if not settings["lr"] > 0:
        raise RunError(f"--lr must be positive, got {settings['lr']}")
    if settings["batch_size"] < 1 or settings["train_samples"] < 0 or settings["add_docstrings"] < 0 or settings["threads"] < 1:
        raise RunError("--batch-size and --threads must be at least 1, --train-samples and --add-docstrings at least 0")
    return settings


def check_precision(settings: dict, cpu_flags: list[str]) -> None:
    """bf16 only where the CPU multiplies bf16 natively: elsewhere oneDNN emulates it, slower than fp32."""
    if settings["precision"] == "bf16" and not any(flag in cpu_flags for flag in NATIVE_BF16):
        raise RunError(f"--precision bf16: this CPU has no bf16 instructions ({' or '.join(NATIVE_BF16)}), "
                       "so bf16 would run slower than fp32; use --precision fp32")


def autocast(settings: dict):
    """The context the training forward passes run in: bf16 autocast, or none (fp32)."""
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings["precision"] == "bf16")


def learning_rate(settings: dict, step: int, steps: int) -> float:
    """The rate of global step ``step`` (0-based) of ``steps``: constant lr, or lr * (1 + cos(pi step / steps)) / 2."""
    return float(settings["lr"]) * rate_factor(min(step, steps), max(steps, 1), settings["lr_decay"] or "constant")


def schedule_of(settings: dict) -> GMPSchedule | None:
    """The GMP schedule of a gradual start; None for a one-shot start (its masks are fixed: any
    number of epochs from 1 will do)."""
    if settings["start"] == "one-shot":
        if isinstance(settings["epochs"], bool) or not isinstance(settings["epochs"], int) or settings["epochs"] < 1:
            raise RunError(f"--epochs must be a whole number of at least 1, got {settings['epochs']!r}")
        return None
    try:
        return GMPSchedule.for_epochs(
            int(settings["epochs"]), settings["pruning_end"], init_sparsity=float(settings["init_sparsity"]),
            update_frequency=int(settings["update_frequency"]),
        )
    except ValueError as exc:
        raise RunError(f"--epochs / --pruning-end / --init-sparsity / --update-frequency: {exc}") from None


