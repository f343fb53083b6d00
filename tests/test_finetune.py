"""`spdy finetune`: the GMP schedule, its masks, checkpoints, and the command end to end on digits."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

from engine.search import baselines
from engine.recovery import checkpoint
from engine.recovery.settings import NATIVE_BF16
from engine.search.budget import make_problem
from engine.core.profile import load_profile
from engine.core.profile_toml import to_toml
from engine.core.events import read_events
from engine.export.files import read_recipe_schedule, read_recipe_targets
from engine.export.result import write_result
from engine.recovery.finetune import Options, execute, open_finetune
from engine.recovery.gmp import GradualMasks
from engine.core.environment import cpu_flags
from engine.core.grid import level_sparsity, parse_nm
from engine.core.masks import pruned_count, satisfies_nm
from engine.export.schedule import DEFAULT, GMPSchedule, cubic
from engine.timing.table import load_table, save_table
from spdy_tui.cli import Exit, app
from tests.test_pipeline import write_profile

TARGET = 5.0  # on the fixture table: fc1 and fc2 at ~95% sparsity, where one-shot magnitude pruning hurts (~94% held-out)
EPOCHS = 6  # pruning ends at the start of epoch 4 (two thirds), two epochs of fine-tuning follow
ACCURACY_BOUND = 0.90  # the dense digits CNN scores ~0.98 on these 256 held-out samples


def run_cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


# ---------------------------------------------------------------------------- the schedule
def test_cubic_schedule_exact_values():
    schedule = GMPSchedule(init_sparsity=0.25, start_epoch=2, end_epoch=6, num_epochs=8)
    assert schedule.update_epochs() == [2, 3, 4, 5, 6]
    assert [schedule.sparsity(t, "0.7500") for t in range(8)] == [
        0.0, 0.0, 0.25, 0.75 - 0.5 * 0.75**3, 0.6875, 0.75 - 0.5 * 0.25**3, 0.75, 0.75]
    assert schedule.sparsity(4, "0.7500") == 0.6875  # midpoint: s_f + (s_i - s_f) / 8
    assert cubic(5.0, 0, 10, 0.05, 0.8) == pytest.approx(0.8 - 0.75 / 8, abs=1e-15)  # the default recipe's midpoint
    assert schedule.sparsity(2, "2:4") == 0.5 and schedule.sparsity(2, "0.1000") == 0.1  # start at their final level
    assert schedule.sparsity(3, "0.0000") == 0.0
    every_other = GMPSchedule(init_sparsity=0.25, start_epoch=0, end_epoch=5, num_epochs=7, update_frequency=2)
    assert every_other.update_epochs() == [0, 2, 4, 5]
    assert every_other.sparsity(1, "0.7500") == 0.25 and every_other.sparsity(3, "0.7500") == every_other.sparsity(2, "0.7500")
    assert DEFAULT == GMPSchedule(0.05, 0, 10, 15, 1) == GMPSchedule.for_epochs(15)
    assert GMPSchedule.for_epochs(EPOCHS).end_epoch == 4 and GMPSchedule.for_epochs(2).end_epoch == 1
    with pytest.raises(ValueError, match="end_epoch < num_epochs"):
        GMPSchedule(end_epoch=15, num_epochs=15)  # the final sparsity would never be applied
    with pytest.raises(ValueError, match="end_epoch < num_epochs"):
        GMPSchedule.for_epochs(1)
    with pytest.raises(ValueError, match="update_frequency"):
        GMPSchedule(update_frequency=0)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3)
        self.fc = nn.Linear(32, 16)
        self.head = nn.Linear(16, 4)


def test_masks_grow_monotonically_to_exact_counts():
    torch.manual_seed(0)
    model = Tiny()
    levels = {"conv": "0.7354", "fc": "2:4", "head": "0.0000"}
    schedule = GMPSchedule(init_sparsity=0.05, start_epoch=1, end_epoch=5, num_epochs=7, update_frequency=2)
    masks = GradualMasks(model, levels, schedule)
    previous = {}
    for epoch in range(schedule.num_epochs):
        with torch.no_grad():  # "training": every weight moves, pruned ones too (momentum)
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter))
        sparsities = masks.update(epoch)
        assert (sparsities is None) == (epoch not in (1, 3, 5))
        masks.apply()  # as after every optimiser step
        for name, keep in masks.keep.items():
            weight = model.get_submodule(name).weight
            assert torch.equal(weight != 0, keep)  # applied: exact zeros where pruned
            assert not (keep & ~previous.get(name, torch.ones_like(keep))).any()  # a pruned weight never returns
            if name == "conv":
                assert int((~keep).sum()) == pruned_count(keep.numel(), schedule.sparsity(epoch, levels[name]))
            previous[name] = keep.clone()
    conv, fc = model.conv.weight, model.fc.weight
    assert int((conv == 0).sum()) == round(conv.numel() * 0.7354) == 212
    assert satisfies_nm(fc, parse_nm("2:4")) and int((fc == 0).sum()) == fc.numel() // 2
    assert "head" not in masks.keep and int((model.head.weight == 0).sum()) == 0
    loss = model.conv.weight.sum() + model.fc.weight.sum()
    loss.backward()
    masks.mask_gradients()
    assert int((model.conv.weight.grad != 0).sum()) == conv.numel() - 212


def test_checkpoint_continues_adam_bit_identically(tmp_path):
    def make():
        torch.manual_seed(1)
        model = nn.Linear(8, 4)
        return model, torch.optim.Adam(model.parameters(), lr=0.1)

    def step(model, optimizer, k):
        x = torch.arange(8.0).mul(k + 1).div(10)
        optimizer.zero_grad()
        model(x).pow(2).sum().backward()
        optimizer.step()

    reference, reference_opt = make()
    for k in range(5):
        step(reference, reference_opt, k)
    model, optimizer = make()
    for k in range(3):
        step(model, optimizer, k)
    masks = {"layer": torch.tensor([True, False])}
    checkpoint.save(tmp_path, 3, model, masks, optimizer, {"note": "x"})
    state = checkpoint.load_state(tmp_path)
    assert state["epoch"] == 3 and state["checkpoint"] == "checkpoint-0003" and state["note"] == "x"
    fresh, fresh_opt = make()
    assert torch.equal(checkpoint.restore(tmp_path, state, fresh, fresh_opt)["layer"], masks["layer"])
    for k in range(3, 5):
        step(fresh, fresh_opt, k)
    assert torch.equal(fresh.weight, reference.weight) and torch.equal(fresh.bias, reference.bias)
    checkpoint.save(tmp_path, 4, fresh, masks, fresh_opt, {})
    assert [p.name for p in tmp_path.glob("checkpoint-*")] == ["checkpoint-0004"]  # older ones removed


# ---------------------------------------------------------------------------- end to end on digits
def finished_run(root: Path, target: float = TARGET) -> Path:
    """A run directory with what `spdy finetune` reads from a finished `spdy run`: profile.toml,
    timings.json and result.json, its allocation the DP's (prior costs) on the fixture table and its
    uniform baseline. Built directly: a full `spdy run` would spend its time on search and database."""
    profile = load_profile(write_profile(root, target=target))
    run_dir = root / "run"
    run_dir.mkdir()
    (run_dir / "profile.toml").write_text(to_toml(profile))
    table = load_table(profile.hardware.timings)
    save_table(table, run_dir / "timings.json")
    problem = make_problem(table, target)
    allocation, uniform = problem.solve(None, profile.search.buckets), baselines.uniform(problem)
    write_result(run_dir, {
        "target_speedup": target, "predicted_speedup": allocation.predicted_speedup, "measured_speedup": None,
        "dense_baseline": "fixture", "layers": allocation.as_rows(), "loss": {"calibration": None, "heldout": None},
        "baselines": {"uniform": {"levels": uniform.levels, "predicted_speedup": uniform.predicted_speedup,
                                  "loss": {"calibration": None, "heldout": None}}},
        "seed": 0, "evaluations": 0,
    })
    # the run's one-shot weights (a one-shot start trains these): magnitude pruning of the allocation
    from engine.model.sources import load_model
    from engine.recovery.gmp import one_shot_magnitude
    from engine.run.products import write_final

    levels = {row["name"]: row["level"] for row in allocation.as_rows()}
    write_final(run_dir, one_shot_magnitude(load_model(profile), levels))
    return run_dir


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A finished run and its fine-tuning (with verify), uninterrupted."""
    run_dir = finished_run(tmp_path_factory.mktemp("finetune"))
    result = run_cli("finetune", run_dir, "--start", "gradual", "--epochs", EPOCHS, "--threads", 1, "--json")
    assert result.exit_code == 0, result.output
    return run_dir, json.loads(result.stdout)


def test_finetune_reaches_exact_levels_and_beats_one_shot(tuned):
    run_dir, result = tuned
    out = run_dir / "finetune"
    allocation = {row["name"]: row["level"] for row in json.loads((run_dir / "result.json").read_text())["layers"]}
    assert sum(level_sparsity(level) > 0.7 for level in allocation.values()) >= 2
    from engine.model.sources import load_model

    model = load_model(load_profile(run_dir / "profile.toml")).model
    model.load_state_dict(load_file(out / "pruned.safetensors"))  # plain PyTorch, strict
    for name, level in allocation.items():
        weight = model.get_submodule(name).weight
        assert int((weight == 0).sum()) == pruned_count(weight.numel(), level_sparsity(level)), name
    held = result["heldout"]
    assert held["finetuned"] >= ACCURACY_BOUND and held["finetuned"] > held["one_shot_magnitude"], held
    assert result["start"] == "gradual"
    assert result["heldout_metric"] == "accuracy" and result["training"]["loss"] == "cross-entropy"
    assert result["measured_speedup"] > 0 and result["verify"]["max_abs_difference"] < 1e-3
    assert read_recipe_schedule(out / "recipe.yaml") == GMPSchedule.for_epochs(EPOCHS)
    assert read_recipe_targets(out / "recipe.yaml") == {
        f"{name}.weight": level_sparsity(level) for name, level in allocation.items() if level_sparsity(level) > 0}
    events = [e for e in read_events(run_dir / "events.jsonl") if e["type"] == "finetune"]
    phases = [e["phase"] for e in events if e["phase"] != "step"]
    assert phases == ["preparing", "started"] + ["prune", "epoch"] * 5 + ["epoch", "verify", "done"]
    assert events[0]["what"] == "reading the training data"  # labels: no dense pass to prepare
    pruned = [e["pruned"] for e in events if e["phase"] == "prune"]
    for name, level in allocation.items():
        counts = [p.get(name, 0) for p in pruned]
        final = pruned_count(model.get_submodule(name).weight.numel(), level_sparsity(level))
        assert counts == sorted(counts) and counts[-1] == final, name  # monotone, exact at the end
    assert checkpoint.load_state(out)["done"] is True


def test_one_shot_start_trains_the_runs_weights_with_their_masks_fixed(tuned):
    run_dir, _ = tuned
    out = run_dir / "finetune-one-shot"
    result = run_cli("finetune", run_dir, "--epochs", 3, "--threads", 1, "--no-verify", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["start"] == "one-shot" and record["schedule"] is None and not (out / "recipe.yaml").exists()
    one_shot, tuned_weights = load_file(run_dir / "final.safetensors"), load_file(out / "pruned.safetensors")
    allocation = {row["name"]: row["level"] for row in record["layers"]}
    for name, level in allocation.items():
        start, end = one_shot[f"{name}.weight"], tuned_weights[f"{name}.weight"]
        if level_sparsity(level) > 0:
            assert torch.equal(start == 0, end == 0), name  # exactly the one-shot mask, never re-chosen
        assert not torch.equal(start, end), name  # and the weights did train
    held = record["heldout"]
    # the fixture's one-shot weights are one-shot magnitude pruning: training must improve on them
    assert held["finetuned"] > held["one_shot_magnitude"], held


def test_distillation_targets_are_the_dense_outputs_kept_on_disk(tuned):
    run_dir, _ = tuned
    out = run_dir / "finetune-kl"
    result = run_cli("finetune", run_dir, "--epochs", 2, "--loss", "kl", "--threads", 1, "--no-verify", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["training"]["loss"] == "kl"
    from engine.model.data import digits_split
    from engine.model.sources import load_model

    images, _ = digits_split(0)["train"]
    with torch.no_grad():
        dense = load_model(load_profile(run_dir / "profile.toml")).model(images)
    torch.testing.assert_close(load_file(out / "teacher.safetensors")["outputs"], dense)


def test_killed_finetune_resumes_to_bit_identical_weights(tuned):
    run_dir, _ = tuned
    killed = run_dir / "finetune-killed"

    def kill_in_epoch_four(event):
        if event["type"] == "finetune" and event["phase"] == "step" and event["epoch"] == 3:
            raise KeyboardInterrupt  # mid-epoch: the last checkpoint is the one after epoch 3

    job = open_finetune(run_dir, Options(start="gradual", epochs=EPOCHS, threads=1), killed, listener=kill_in_epoch_four, verify=False)
    with pytest.raises(KeyboardInterrupt):
        execute(job)
    assert checkpoint.load_state(killed)["epoch"] == 3 and not (killed / "pruned.safetensors").exists()

    refused = run_cli("finetune", run_dir, "--out", killed, "--epochs", EPOCHS)
    assert refused.exit_code == Exit.BAD_INPUT and "stopped after epoch 3 of 6" in refused.output
    assert "--resume" in refused.output
    other = run_cli("finetune", run_dir, "--out", killed, "--resume", "--epochs", 7)
    assert other.exit_code == Exit.BAD_INPUT and "--epochs 7 (was 6)" in other.output

    resumed = run_cli("finetune", run_dir, "--out", killed, "--resume", "--no-verify", "--json")
    assert resumed.exit_code == 0, resumed.output
    expected, got = load_file(run_dir / "finetune" / "pruned.safetensors"), load_file(killed / "pruned.safetensors")
    assert expected.keys() == got.keys() and all(torch.equal(expected[key], got[key]) for key in expected)
    assert json.loads(resumed.stdout)["epochs"] == tuned[1]["epochs"]  # the same loss and held-out curve

    finished = run_cli("finetune", run_dir, "--epochs", EPOCHS)
    assert finished.exit_code == Exit.BAD_INPUT and "(finished)" in finished.output and "--resume" in finished.output


@pytest.mark.slow
def test_sigkilled_finetune_resumes_to_bit_identical_weights(tuned):
    run_dir, _ = tuned
    killed = run_dir / "finetune-sigkilled"
    command = [sys.executable, "-m", "spdy_tui.cli", "finetune", str(run_dir), "--out", str(killed), "--start", "gradual",
               "--epochs", str(EPOCHS), "--threads", "1", "--no-verify"]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and child.poll() is None:
        state = checkpoint.load_state(killed) if (killed / "state.json").exists() else None
        if state and state["epoch"] >= 2:
            break
        time.sleep(0.02)
    assert child.poll() is None, "the fine-tuning finished before it could be killed"
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    resumed = run_cli("finetune", run_dir, "--out", killed, "--resume", "--no-verify")
    assert resumed.exit_code == 0, resumed.output
    expected, got = load_file(run_dir / "finetune" / "pruned.safetensors"), load_file(killed / "pruned.safetensors")
    assert all(torch.equal(expected[key], got[key]) for key in expected)


def test_hidden_weight_needs_a_model_with_blocks(tmp_path):
    run_dir = finished_run(tmp_path)
    result = run_cli("finetune", run_dir, "--hidden-weight", 1, "--epochs", 1, "--no-verify")
    assert result.exit_code == 2, result.output
    assert "--hidden-weight: the model has no list of blocks" in result.output and "Traceback" not in result.output


def test_clear_errors_for_a_run_directory_without_result(tmp_path):
    missing = run_cli("finetune", tmp_path / "nowhere")
    assert missing.exit_code == Exit.BAD_INPUT and "no such run directory" in missing.output
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "profile.toml").write_text('[run]\nname = "x"\n')
    unfinished = run_cli("finetune", tmp_path / "run")
    assert unfinished.exit_code == Exit.BAD_INPUT and "result.json: no such file" in unfinished.output
    assert "spdy run" in unfinished.output and "Traceback" not in unfinished.output


def test_unknown_allocation_names_the_choices(tmp_path):
    run_dir = finished_run(tmp_path)
    result = run_cli("finetune", run_dir, "--allocation", "random")
    assert result.exit_code == Exit.BAD_INPUT and "choose one of spdy, uniform" in result.output


@pytest.mark.skipif(not any(flag in cpu_flags() for flag in NATIVE_BF16), reason="this CPU has no native bf16")
def test_bf16_training_keeps_fp32_weights_and_the_masks(tuned):
    run_dir, _ = tuned
    out = run_dir / "finetune-bf16"
    result = run_cli("finetune", run_dir, "--epochs", 2, "--threads", 1, "--precision", "bf16", "--no-verify", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["training"]["precision"] == "bf16"
    one_shot, tuned_weights = load_file(run_dir / "final.safetensors"), load_file(out / "pruned.safetensors")
    for name, level in {row["name"]: row["level"] for row in record["layers"]}.items():
        start, end = one_shot[f"{name}.weight"], tuned_weights[f"{name}.weight"]
        assert end.dtype == torch.float32, name
        if level_sparsity(level) > 0:
            assert torch.equal(start == 0, end == 0), name
        assert not torch.equal(start, end), name
    assert record["heldout"]["finetuned"] > record["heldout"]["one_shot_magnitude"]


def test_bf16_is_refused_on_a_cpu_without_bf16_instructions(tmp_path, monkeypatch):
    run_dir = finished_run(tmp_path)
    monkeypatch.setattr("engine.recovery.finetune.cpu_flags", lambda: ["avx", "avx2", "fma"])
    result = run_cli("finetune", run_dir, "--precision", "bf16", "--epochs", 1, "--no-verify")
    assert result.exit_code == 2, result.output
    assert "--precision bf16: this CPU has no bf16 instructions" in result.output and "Traceback" not in result.output


def test_the_student_trains_in_eval_mode_unless_dropout_is_asked_for(tuned, monkeypatch):
    from engine.recovery import finetune

    run_dir, _ = tuned
    modes, original = [], finetune.batch_loss
    monkeypatch.setattr(finetune, "batch_loss", lambda loaded, student, *rest: modes.append(student.training) or original(loaded, student, *rest))
    for flags, expected in (((), False), (("--dropout",), True)):
        modes.clear()
        out = run_dir / f"finetune-mode-{expected}"
        result = run_cli("finetune", run_dir, "--epochs", 1, "--threads", 1, "--no-verify", "--out", out, *flags, "--json")
        assert result.exit_code == 0, result.output
        assert modes and set(modes) == {expected}
        assert json.loads(result.stdout)["training"]["dropout"] is expected


def test_a_finished_finetuning_made_without_verify_is_measured_on_resume_and_deploys_on_our_kernels(tuned):
    from engine.deploy import load
    from engine.model.sources import load_model

    run_dir, _ = tuned
    out = run_dir / "finetune-verify-later"
    assert run_cli("finetune", run_dir, "--epochs", 1, "--threads", 1, "--no-verify", "--out", out).exit_code == 0
    kept = run_cli("finetune", run_dir, "--out", out, "--resume", "--no-verify", "--json")
    assert kept.exit_code == 0, kept.output
    assert json.loads(kept.stdout)["measured_speedup"] is None  # --no-verify again: nothing measured
    measured = run_cli("finetune", run_dir, "--out", out, "--resume", "--json")  # export.verify: on
    assert measured.exit_code == 0, measured.output
    record = json.loads(measured.stdout)
    assert record["measured_speedup"] > 0 and record["verify"]["max_abs_difference"] < 1e-3
    assert record["measured_speedup"] == record["verify"]["measured"]
    assert json.loads((out / "result.json").read_text()) == record
    verifies = lambda: [e for e in read_events(run_dir / "events.jsonl") if e["type"] == "finetune" and e["phase"] == "verify"]  # noqa: E731
    count = len(verifies())
    again = run_cli("finetune", run_dir, "--out", out, "--resume", "--json")
    assert json.loads(again.stdout) == record and len(verifies()) == count  # measured once, then only printed
    pointed = run_cli("verify", out)
    assert pointed.exit_code == 2 and f"spdyfinetune{run_dir}--out{out}--resume" in "".join(pointed.output.split())  # wrapped or not

    plain = load_model(load_profile(run_dir / "profile.toml")).model.eval()
    plain.load_state_dict(load_file(out / "pruned.safetensors"))
    deployed = load(run_dir, runtime="eager", weights=out / "pruned.safetensors")
    images = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(deployed(images), plain(images), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(load(run_dir, runtime="eager")(images), plain(images), rtol=1e-3, atol=1e-4)
    assert any(type(module).__name__ == "SparseLinear" for module in deployed.modules())
