"""`ponderlab eval RUN_DIR [--split test] [task.key=value ...]`: re-test a saved run.

The model is rebuilt from the run's spec.yaml, loaded from its latest checkpoint
(`torch.load(weights_only=True)`), and evaluated on a split of the task rebuilt
with the run's seed. Task overrides (`task.length=20`, more CA steps, ...) make
generalisation tests; the halting options a strategy's config declares inference-only
(`HaltingConfig.inference_options`: CALM's and LayerSkip's exit thresholds, recurrent depth's
exit threshold, PonderNet's inference rule) re-test a run at another exit rule; nothing else in the spec may change. The result goes to
its own file, `eval_<split>[_<label or hash>].json` in the run dir (or `--out`);
results.json, checkpoints and logs are never touched.

Heavy imports (torch, the registry) happen inside functions so that building the
CLI parser stays fast.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CheckpointError, SpecError, StorageError, storage_full

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .data import TensorDataset
    from .interfaces import Task, TaskData
    from .model import PonderModel
    from .spec import SpecBase

SPLITS = ("train", "validation", "test")


# --------------------------------------------------------------------------- run directory
def check_run_dir(run_dir: str | Path) -> Path:
    """The run dir as a Path, or a CheckpointError saying what is missing."""
    path = Path(run_dir)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a run directory (no such directory)")
    if not (path / "spec.yaml").is_file():
        raise CheckpointError(f"{path}: not a run directory (no spec.yaml)")
    return path


def latest_checkpoint_of(run_dir: Path) -> Path:
    """Path of the newest complete checkpoint of a run; CheckpointError when there is none."""
    from .checkpoint import latest_checkpoint

    found = latest_checkpoint(run_dir / "checkpoints")
    if found is None:
        raise CheckpointError(f"{run_dir}: no checkpoint (expected checkpoints/step_XXXXXXXX.pt)")
    return found


def load_run_spec(run_dir: Path, overrides: list[str] | tuple[str, ...] = ()) -> SpecBase:
    """The run's saved spec with `task.*` (and inference-only `halting.*`) overrides applied and validated."""
    from .registry import get_registry
    from .spec import apply_overrides, parse_override, read_spec_file, validate_spec

    data, source = read_spec_file(run_dir / "spec.yaml")
    halting = str((data.get("halting") or {}).get("name", "none"))
    knobs = get_registry().get("halting", halting).cls.config_class.inference_options
    for raw in overrides:
        path, _ = parse_override(raw)
        if path[0] == "task" and len(path) >= 2:
            continue
        if path[0] == "halting" and len(path) == 2 and path[1] in knobs:
            continue
        allowed = ", ".join(f"halting.{knob}" for knob in knobs) or f"no halting option of {halting!r}"
        raise SpecError(
            f"eval overrides may change the task only (task.key=value), and the inference-only halting "
            f"options of the run's strategy ({allowed})",
            where=f"override {raw!r}",
        )
    data = apply_overrides(data, list(overrides), source)
    return validate_spec(data, source)


def load_trained_model(
    run_dir: Path, spec: SpecBase, vocab_size: int, device: torch.device, checkpoint: Path | None = None
) -> tuple[PonderModel, Path, int]:
    """(model with the checkpoint's weights in eval mode, checkpoint path, its step)."""
    from .checkpoint import load_checkpoint
    from .run import build_model_from_spec

    path = checkpoint or latest_checkpoint_of(run_dir)
    try:
        state = load_checkpoint(path, device)
    except CheckpointError as exc:  # torch's reasons can run over several lines: keep the first
        raise CheckpointError(str(exc).strip().splitlines()[0]) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a ponderlab checkpoint (no 'model' entry)")
    model = build_model_from_spec(spec, vocab_size)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not match the model of {run_dir / 'spec.yaml'} ({first})") from None
    model.to(device).eval()
    return model, path, int(state.get("step", -1))


def build_task_data(spec: SpecBase) -> tuple[Task, TaskData]:
    """The task of a spec and its splits, built with the spec's seed (as the run did)."""
    from .run import build_task

    task = build_task(spec)
    return task, task.build(spec.seed)


# --------------------------------------------------------------------------- hop matrices
def padded_rows(rows, fill: Any = float("nan"), dtype: Any = float) -> np.ndarray:
    """Rows of different lengths as one (N, W) array, W the longest row, padded with `fill`."""
    import numpy as np

    matrix = np.full((len(rows), max((len(row) for row in rows), default=0)), fill, dtype=dtype)
    for i, row in enumerate(rows):
        matrix[i, : len(row)] = row
    return matrix


def hop_matrix(
    model: PonderModel,
    dataset: TensorDataset,
    *,
    examples: int = 32,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-example hops (N, L) of the first `examples` examples and their scored mask (N, L).

    Hops are `model(input_ids).stats.hops` (mean over ponder sites), run on the CPU in fp32;
    padding is NaN.
    """
    from .halting_report import batch_hops

    rows, scored = [], []
    for batch in dataset.sequential_batches(batch_size, min(examples, len(dataset))):
        hops, mask, labels = batch_hops(model, batch, "cpu", precision="fp32")  # (B, L) each
        rows.extend(hops.masked_fill(~mask, float("nan")).numpy())
        scored.extend((labels != -100).numpy())
    return padded_rows(rows), padded_rows(scored, False, bool)


def run_hop_matrix(run_dir: str | Path, split: str = "test", examples: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """hop_matrix() for a saved run: rebuilds its model (latest checkpoint) and task data."""
    import torch

    from .data import TensorDataset

    path = check_run_dir(run_dir)
    spec = load_run_spec(path)
    task, data = build_task_data(spec)
    model, _, _ = load_trained_model(path, spec, task.vocab_size, torch.device("cpu"))
    dataset = TensorDataset(data.split(split), task.slice_columns)
    batch = spec.training.eval_batch_size or spec.training.batch_size
    return hop_matrix(model, dataset, examples=examples, batch_size=batch)


def scored_mask(run_dir: str | Path, split: str = "test", examples: int = 32) -> np.ndarray:
    """(N, L) bool: which positions of the first `examples` examples of a split are scored.

    Rebuilds only the task data of a run (no model, no checkpoint).
    """
    import numpy as np

    spec = load_run_spec(check_run_dir(run_dir))
    _, data = build_task_data(spec)
    labels = data.split(split)["labels"][:examples]
    return padded_rows([np.asarray(row) != -100 for row in labels], False, bool)


# --------------------------------------------------------------------------- evaluation
def overrides_tag(overrides: list[str] | tuple[str, ...]) -> str:
    """A short stable tag for a set of overrides (order-insensitive)."""
    text = "\n".join(sorted(o.strip() for o in overrides))
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def output_path(
    run_dir: Path,
    split: str,
    overrides: list[str] | tuple[str, ...] = (),
    label: str | None = None,
    out: str | Path | None = None,
) -> Path:
    """Where an evaluation is written: eval_<split>[_<label|hash>].json in the run dir or --out.

    `out` ending in .json names the file; any other `out` is a folder. Writing over
    a run's own files (results.json, spec.yaml, ...) is refused.
    """
    suffix = ""
    if label:
        if not re.fullmatch(r"[A-Za-z0-9._=+-]+", label):
            raise SpecError(f"--label {label!r}: use letters, digits and . _ = + - only")
        suffix = f"_{label}"
    elif overrides:
        suffix = f"_{overrides_tag(overrides)}"
    name = f"eval_{split}{suffix}.json"
    if out is None:
        target = run_dir / name
    else:
        out = Path(out)
        target = out if out.suffix == ".json" else out / name
    folder = target.resolve().parent
    if folder == run_dir.resolve():
        if not target.name.startswith("eval_"):
            raise SpecError(f"--out {target}: refusing to write a run's own file (eval files start with eval_)")
    elif holds_run_files(folder) and target.exists():
        raise SpecError(
            f"--out {target}: {folder} holds another run's files; refusing to overwrite {target.name} "
            "(name a file that does not exist there)"
        )
    return target


#: Files whose presence marks a folder as (part of) a run directory.
RUN_FILE_NAMES = ("spec.yaml", "results.json", "metrics.jsonl", "seed", "halting.json")


def holds_run_files(folder: Path) -> bool:
    """True when `folder` is a run directory or its checkpoints folder."""
    if folder.name == "checkpoints" and (folder.parent / "spec.yaml").is_file():
        return True
    return any((folder / name).exists() for name in RUN_FILE_NAMES)


def evaluate_run(
    run_dir: str | Path,
    *,
    split: str = "test",
    overrides: list[str] | tuple[str, ...] = (),
    batch_size: int | None = None,
    limit: int | None = None,
    device: str = "auto",
    checkpoint: str | Path | None = None,
    label: str | None = None,
) -> dict[str, Any]:
    """Evaluate a saved run's checkpoint on a split; returns the record `main` writes."""
    import torch

    from .data import TensorDataset
    from .training_step import evaluate_dataset, pick_device

    if split not in SPLITS:
        raise SpecError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})", path="--split")
    path = check_run_dir(run_dir)
    ckpt = Path(checkpoint) if checkpoint else latest_checkpoint_of(path)
    spec = load_run_spec(path, overrides)
    if spec.training.num_threads:
        torch.set_num_threads(spec.training.num_threads)
    started = time.perf_counter()
    target = pick_device(device)
    task, data = build_task_data(spec)
    model, ckpt, step = load_trained_model(path, spec, task.vocab_size, target, ckpt)
    dataset = TensorDataset(data.split(split), task.slice_columns)
    accumulator = evaluate_dataset(
        model,
        dataset,
        batch_size=batch_size or spec.training.eval_batch_size or spec.training.batch_size,
        device=target,
        precision=spec.training.precision,
        limit=limit,
        slice_columns=task.slice_columns,
    )
    metrics = accumulator.compute()
    if limit is None:
        metrics.update(task.extra_metrics(model, data.split(split), target))
    return {
        "run_dir": str(path),
        "checkpoint": str(ckpt),
        "step": step,
        "split": split,
        "overrides": list(overrides),
        "label": label,
        "limit": limit,
        "task": spec.task.model_dump(mode="json"),
        "seed": spec.seed,
        "device": str(target),
        "seconds": round(time.perf_counter() - started, 3),
        "results": {f"{split}/{k}": v for k, v in metrics.items()},
        "halting": accumulator.halting_profile(),
    }


def format_evaluation(record: dict[str, Any]) -> str:
    """A few readable lines about one evaluation."""
    split = record["split"]
    results = record["results"]
    changed = " ".join(record["overrides"]) or "none"

    def value(key: str) -> str:
        number = results.get(f"{split}/{key}")
        return "-" if number is None else f"{number:.4f}"

    lines = [
        f"{record['run_dir']} @ step {record['step']} on {split} (overrides: {changed})",
        f"exact match {value('exact_match')}  token acc {value('token_accuracy')}  "
        f"loss {value('loss')}  mean hops {value('mean_hops')}  ponder cost {value('ponder_cost')}",
    ]
    slices = sorted(k for k in results if k.count("/") == 2 and k.endswith("/exact_match"))
    for key in slices:
        name = key.split("/")[1]
        token = results.get(f"{split}/{name}/token_accuracy")
        lines.append(f"  {name}: exact match {results[key]:.4f}  token acc {token:.4f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI
def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Evaluate the latest checkpoint of a run, optionally on a changed task."
    parser.add_argument("run_dir", help="a run directory (holds spec.yaml and checkpoints/)")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="task.key=value changes, e.g. task.length=20, or inference-only halting options, e.g. "
        "halting.threshold=0.7 for calm",
    )
    parser.add_argument("--split", default="test", choices=SPLITS, help="split to evaluate (default test)")
    parser.add_argument("--out", help="output file (.json) or folder (default: the run directory)")
    parser.add_argument("--label", help="name suffix for the output file instead of a hash of the overrides")
    parser.add_argument("--checkpoint", help="a specific checkpoint file (default: the latest)")
    parser.add_argument("--batch-size", type=positive_int, help="evaluation batch size (default: the run's)")
    parser.add_argument("--limit", type=positive_int, help="evaluate only the first N examples (N >= 1)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def main(args: argparse.Namespace) -> int:
    from .checkpoint import atomic_write_text

    run_dir = check_run_dir(args.run_dir)
    target = output_path(run_dir, args.split, args.overrides, args.label, args.out)
    record = evaluate_run(
        run_dir,
        split=args.split,
        overrides=args.overrides,
        batch_size=args.batch_size,
        limit=args.limit,
        device=args.device,
        checkpoint=args.checkpoint,
        label=args.label,
    )
    folder_existed = target.parent.exists()
    try:
        atomic_write_text(target, json.dumps(record, indent=1, sort_keys=True))
    except OSError as exc:
        if not folder_existed:
            shutil.rmtree(target.parent, ignore_errors=True)
        if storage_full(exc):
            raise StorageError(f"cannot write {target}: {exc.strerror}; nothing was written") from None
        raise
    print(format_evaluation(record))
    print(f"written: {target}")
    return 0
