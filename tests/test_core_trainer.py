"""Trainer and run directory: schedule, checkpoints, exact resume of a killed run, NaN stop."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from resume_checks import assert_resume_reproduces_the_uninterrupted_run

from ponderlab.core import checkpoint as ckpt
from ponderlab.core.config import TrainingConfig
from ponderlab.core.errors import CheckpointError, NonFiniteLossError
from ponderlab.core.run import execute
from ponderlab.core.spec import validate_spec
from ponderlab.core.trainer import lr_factor

TINY = {
    "seed": 5,
    "task": {"name": "binary_reverse", "length": 6, "train_size": 512, "validation_size": 32, "test_size": 48},
    "backbone": {"name": "lstm", "d_model": 16, "n_layers": 2},
    "halting": {"name": "graves", "max_hops": 3, "epsilon": 0.1, "time_penalty": 0.01},
    "training": {
        "steps": 30, "batch_size": 16, "lr": 0.01, "warmup_steps": 5, "eval_every": 10,
        "log_every": 5, "keep_checkpoints": 2, "num_threads": 1,
    },
}


def tiny_spec(**training):
    data = json.loads(json.dumps(TINY))
    data["training"].update(training)
    return validate_spec(data)


def test_lr_schedule_warmup_then_cosine_to_floor():
    config = TrainingConfig(steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, config) == pytest.approx(0.1)
    assert lr_factor(9, config) == pytest.approx(1.0)
    assert lr_factor(10, config) == pytest.approx(1.0)
    assert lr_factor(60, config) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: cos = 0
    assert lr_factor(110, config) == pytest.approx(0.1)


def test_lr_schedule_linear_decay_is_seq_icls_with_a_zero_floor():
    """transformers' get_linear_schedule_with_warmup after the warmup: (steps - t) / (steps - warmup)."""
    config = TrainingConfig(steps=110, warmup_steps=10, min_lr_ratio=0.0, schedule="linear")
    assert lr_factor(9, config) == pytest.approx(1.0)
    assert lr_factor(35, config) == pytest.approx(75 / 100)
    assert lr_factor(60, config) == pytest.approx(0.5)
    assert lr_factor(110, config) == pytest.approx(0.0)
    floored = TrainingConfig(steps=110, warmup_steps=10, min_lr_ratio=0.2, schedule="linear")
    assert lr_factor(35, floored) == pytest.approx(0.2 + 0.8 * 0.75)


def test_run_directory_contents_and_results(tmp_path):
    results, run_dir = execute(tiny_spec(), output_dir=tmp_path / "run", progress=False)
    for name in ("spec.yaml", "seed", "metrics.jsonl", "results.json", "halting.json"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    kept = ckpt.list_checkpoints(run_dir / "checkpoints")
    assert [step for step, _ in kept] == [20, 30]  # keep_checkpoints=2
    assert not list((run_dir / "checkpoints").glob(".*tmp"))
    saved = json.loads((run_dir / "results.json").read_text())
    for key in ("test/exact_match", "test/token_accuracy", "test/mean_hops", "test/ponder_cost",
                "test/max_hops", "validation/exact_match", "test/length=6/exact_match"):
        assert key in saved and math.isfinite(saved[key]), key
    assert saved == json.loads(json.dumps(results))
    assert 1.0 <= saved["test/mean_hops"] <= 3.0
    assert (run_dir / "seed").read_text().strip() == "5"
    respec = validate_spec(yaml.safe_load((run_dir / "spec.yaml").read_text()))
    assert respec.model_dump(exclude={"output_dir"}) == tiny_spec().model_dump(exclude={"output_dir"})
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} == {"train", "validation", "test"}
    assert [r["step"] for r in records if r["split"] == "train"] == [5, 10, 15, 20, 25, 30]


def test_refuses_to_overwrite_a_run(tmp_path):
    execute(tiny_spec(steps=2, eval_every=1), output_dir=tmp_path / "run", progress=False)
    with pytest.raises(Exception, match="not empty"):
        execute(tiny_spec(steps=2, eval_every=1), output_dir=tmp_path / "run", progress=False)


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "step_00000001.pt"
    ckpt.save_checkpoint({"x": torch.ones(2)}, path)

    def exploding_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(OSError):
        ckpt.save_checkpoint({"x": torch.zeros(2)}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000001.pt"]  # no temp left
    assert torch.equal(ckpt.load_checkpoint(path)["x"], torch.ones(2))  # old file intact


def test_corrupt_checkpoint_gives_clear_error(tmp_path):
    path = tmp_path / "step_00000003.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        ckpt.load_checkpoint(path)


def _run_with_poison(tmp_path, monkeypatch, poison_parameters):
    """Train 40 steps, calling poison_parameters(model) after the validation at step 20."""
    from ponderlab.core import run as run_module

    built = {}
    original = run_module.build_model_from_spec

    def capture(spec, vocab_size):
        built["model"] = original(spec, vocab_size)
        return built["model"]

    def on_validation(step, metrics):
        if step == 20:
            with torch.no_grad():
                poison_parameters(built["model"])

    monkeypatch.setattr(run_module, "build_model_from_spec", capture)
    with pytest.raises(NonFiniteLossError) as info:
        execute(tiny_spec(steps=40, eval_every=10), output_dir=tmp_path / "run", progress=False,
                on_validation=on_validation)
    steps = [s for s, _ in ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")]
    assert not (tmp_path / "run" / "results.json").exists()
    return str(info.value), steps


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    def to_nan(model):
        for param in model.parameters():
            param.fill_(float("nan"))

    # Poisoned right after the step-20 checkpoint: the loss of step 21 is NaN.
    message, steps = _run_with_poison(tmp_path, monkeypatch, to_nan)
    assert message.startswith("non-finite loss (nan) at step 21")
    assert "step_00000020.pt" in message
    assert steps == [10, 20]
    state = ckpt.load_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000020.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    from ponderlab.core.run import build_model_from_spec, build_task
    from ponderlab.core.trainer import Trainer

    spec = tiny_spec(steps=4, eval_every=2)
    task = build_task(spec)
    trainer = Trainer(model=build_model_from_spec(spec, task.vocab_size), task=task, data=task.build(0),
                      config=spec.training, seed=0, run_dir=tmp_path, progress=False)
    trainer.step = 2
    first = trainer.save_checkpoint()
    with torch.no_grad():
        trainer.model.head.weight[0, 0] = float("inf")
    trainer.step = 4
    with pytest.raises(NonFiniteLossError, match="non-finite parameters after step 4 \\(head.weight\\)"):
        trainer.save_checkpoint()
    assert [p for _, p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == [first]


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run_exactly(tmp_path):
    """A deterministic run (graves on an LSTM draws nothing from torch's RNG); stochastic
    runs: tests/test_resume_stochastic.py."""
    spec = json.loads(json.dumps(TINY))
    spec["training"].update(steps=120, eval_every=20, checkpoint_every=20, keep_checkpoints=3, log_every=20)
    assert_resume_reproduces_the_uninterrupted_run(spec, tmp_path, kill_at=40)


@pytest.mark.gpu
def test_run_on_gpu_trains_under_bf16_and_saves_cpu_loadable_checkpoints(tmp_path):
    results, run_dir = execute(tiny_spec(device="cuda"), output_dir=tmp_path / "run", progress=False)
    assert results["device"].startswith("cuda")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["split"] == "train"]
    assert all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0]
    _, last = ckpt.list_checkpoints(run_dir / "checkpoints")[-1]
    state = ckpt.load_checkpoint(last)  # weights_only, mapped to the CPU
    assert all(t.device.type == "cpu" for t in state["model"].values())
