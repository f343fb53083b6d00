"""`spdy finetune`: recovery training of a finished run's allocation (from its one-shot weights, or gradual pruning)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from spdy_tui.cli.base import (
    argument,
    err,
    existing_dir,
    fail,
    json_flag,
    option,
    out,
    output_dir,
    print_json,
)
from spdy_tui.cli.runs import RESUME_OPTION


def finetune(
    run_dir: Path = argument("A finished `spdy run` directory (with result.json and profile.toml).", "RUN_DIR"),
    data: Optional[Path] = option(
        None, "--data", metavar="FILE", help="Training data: a text file (one sample per line) or a .safetensors/.pt/.npy file "
        "with inputs (and labels). Default: the profile's data without its held-out samples (digits: the train split)."),
    start: Optional[str] = option(
        None, "--start", metavar="HOW",
        help="one-shot (default): train the run's one-shot reconstructed weights, masks fixed; gradual: magnitude "
        "pruning from the dense model on the cubic schedule."),
    epochs: Optional[int] = option(None, "--epochs", metavar="N", help="Training epochs in all (default 15, as in recipe.yaml)."),
    pruning_end: Optional[int] = option(
        None, "--pruning-end", metavar="EPOCH", help="Epoch at whose start every layer reaches its level (default: two thirds of --epochs)."),
    init_sparsity: Optional[float] = option(None, "--init-sparsity", metavar="S", help="Sparsity of the first mask update (default 0.05)."),
    update_frequency: Optional[int] = option(None, "--update-frequency", metavar="N", help="Epochs between mask updates (default 1)."),
    allocation: str = option(
        "spdy", "--allocation", metavar="NAME",
        help="Which allocation of result.json: spdy, or a baseline (uniform, global-magnitude, prior, squared-error)."),
    loss: Optional[str] = option(
        None, "--loss", metavar="LOSS",
        help="auto (cross-entropy on labels for classifiers, cosine distillation for encoders), cross-entropy, kl, cosine or mse."),
    lr: Optional[float] = option(None, "--lr", metavar="LR", help="Adam learning rate (default 1e-3; 5e-5 for transformers)."),
    lr_decay: Optional[str] = option(
        None, "--lr-decay", metavar="HOW", help="constant (default) or cosine: the rate falls to 0 over all steps."),
    hidden_weight: Optional[float] = option(
        None, "--hidden-weight", metavar="W",
        help="Also distil the dense model's hidden states block by block, with this weight (default 0: the output only)."),
    precision: Optional[str] = option(
        None, "--precision", metavar="P",
        help="fp32 (default) or bf16: run the training forward passes in bf16 autocast (CPUs with avx512_bf16 or AMX)."),
    group_by_length: Optional[bool] = option(
        None, "--group-by-length/--no-group-by-length", metavar="",
        help="Batch sentences of about one length together, so each batch is cut to its own length "
        "(default on; 2.4x fewer tokens on docstrings)."),
    dropout: Optional[bool] = option(
        None, "--dropout/--no-dropout", metavar="",
        help="Train in the model's train mode, dropout on (default off: eval mode, as the teacher runs)."),
    batch_size: Optional[int] = option(None, "--batch-size", metavar="N", help="Training batch size (default 32)."),
    train_samples: Optional[int] = option(
        None, "--train-samples", metavar="N", help="Use a seeded subset of this many training samples (default: all)."),
    add_docstrings: Optional[int] = option(
        None, "--add-docstrings", metavar="N",
        help="Text models: add N seeded sentences from the installed Python packages' docstrings to the training "
        "text (default 0; the first use parses them, about 2 minutes)."),
    threads: Optional[int] = option(None, "--threads", metavar="N", min=1, help="CPU threads (default: the run's hardware.threads)."),
    out_dir: Optional[Path] = option(
        None, "--out", metavar="DIR", help="Output folder (default RUN_DIR/finetune, or RUN_DIR/finetune-<allocation>)."),
    resume: bool = RESUME_OPTION,
    verify: Optional[bool] = option(
        None, "--verify/--no-verify", metavar="",
        help="Re-measure the speedup end to end at the end (default: the profile's export.verify)."),
    as_json: bool = json_flag("the fine-tuning's result.json"),
) -> None:
    """Recover what pruning lost: train a run's allocation from its one-shot weights (masks fixed) or prune gradually."""
    existing_dir(run_dir, "run directory")
    output_dir(out_dir)
    if data is not None and not data.is_file():
        raise fail(f"--data {data}: " + ("is a directory, not a data file" if data.is_dir() else "no such data file"))
    from engine.recovery import finetune as engine_finetune
    from spdy_tui.progress import StderrProgress

    options = engine_finetune.Options(
        allocation=allocation, start=start, epochs=epochs, pruning_end=pruning_end, init_sparsity=init_sparsity,
        update_frequency=update_frequency, loss=loss, lr=lr, batch_size=batch_size, train_samples=train_samples,
        data=None if data is None else str(data.resolve()), hidden_weight=hidden_weight, lr_decay=lr_decay,
        precision=precision, group_by_length=group_by_length, add_docstrings=add_docstrings, dropout=dropout,
        threads=threads,
    )
    listener = StderrProgress(err)
    try:
        job = engine_finetune.open_finetune(run_dir, options, out_dir, resume, listener=listener, verify=verify)
        err.print(f"fine-tuning into {job.out}")
        result = engine_finetune.execute(job)
    finally:
        listener.close()
    if as_json:
        print_json(result)
        return
    held, measured = result["heldout"], result["measured_speedup"]

    def number(value):
        return "-" if value is None else f"{value:.4f}"

    out.print(
        f"{result['allocation']} allocation, {result['start']} start: held-out {result['heldout_metric']} {number(held['finetuned'])} "
        f"(one-shot magnitude {number(held['one_shot_magnitude'])}, one-shot in the run {number(held['one_shot_run'])}, "
        f"dense {number(held['dense'])}); predicted {number(result['predicted_speedup'])}x, "
        f"measured {'-' if measured is None else f'{measured:.3f}x'}; wrote {job.out}"
    )
