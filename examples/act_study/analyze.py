"""Hops vs. difficulty for finished `ponderlab run` directories (the ACT study).

For each run directory: rebuild the model from spec.yaml, load its last
checkpoint, run the test split in eval mode and collect, per test example, the
mean hops at its scored positions and whether it is solved (exact match).
Difficulty is a per-example slice column of the task (`count` for parity,
`carry` for binary addition; `--difficulty` picks another). Prints accuracy,
mean hops, mean layers and the Pearson / Spearman correlation of hops with
difficulty, plus hops and accuracy per difficulty value; `--json` saves it all.

    python examples/act_study/analyze.py runs/act_study/* --json runs/act_study/summary.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    if np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    if np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


@torch.no_grad()
def analyze_run(run_dir: Path, difficulty: str | None, batch_size: int = 128, seed: int = 0) -> dict:
    """Per-example hops, solved flags and difficulty of a run's test split, and their summary."""
    from ponderlab.core import checkpoint as ckpt
    from ponderlab.core.data import TensorDataset
    from ponderlab.core.interfaces import IGNORE_INDEX
    from ponderlab.core.run import build_model_from_spec, build_task
    from ponderlab.core.spec import read_spec_file, validate_spec

    data, source = read_spec_file(run_dir / "spec.yaml")
    spec = validate_spec(data, source)
    task = build_task(spec)
    column = difficulty or (task.slice_columns[-1] if task.slice_columns else None)
    if column is None:
        raise SystemExit(f"{run_dir}: task {spec.task.name!r} has no slice column to use as difficulty")
    test = task.build(spec.seed).test
    if column not in test.column_names:
        raise SystemExit(f"{run_dir}: the test split has no column {column!r}")
    model = build_model_from_spec(spec, task.vocab_size)
    path = ckpt.latest_checkpoint(run_dir / "checkpoints")
    if path is None:
        raise SystemExit(f"{run_dir}: no checkpoint")
    model.load_state_dict(ckpt.load_checkpoint(path)["model"])
    model.eval()
    torch.manual_seed(seed)  # random / sampled halting draw the same way on every call

    rows = TensorDataset(test, (column,))
    hops, hops_all, layers, solved, level = [], [], [], [], []
    for batch in rows.sequential_batches(batch_size):
        out = model(batch["input_ids"], mask=batch["mask"])
        scored = batch["labels"] != IGNORE_INDEX  # (B, L)
        right = (out.logits.argmax(-1) == batch["labels"]) & scored
        count = scored.sum(1).clamp_min(1)
        hops.append(((out.stats.hops.float() * scored).sum(1) / count).numpy())
        real = batch["mask"].float()
        hops_all.append(((out.stats.hops.float() * real).sum(1) / real.sum(1)).numpy())
        layers.append(((out.stats.layers.float() * scored).sum(1) / count).numpy())
        solved.append((right.sum(1) == scored.sum(1)).numpy())
        level.append(batch[column].numpy())
    hops, hops_all, layers = np.concatenate(hops), np.concatenate(hops_all), np.concatenate(layers)
    solved, level = np.concatenate(solved).astype(float), np.concatenate(level)
    per_level = {
        int(v): {
            "examples": int((level == v).sum()),
            "mean_hops": float(hops[level == v].mean()),
            "mean_hops_all_tokens": float(hops_all[level == v].mean()),
            "accuracy": float(solved[level == v].mean()),
        }
        for v in np.unique(level)
    }
    return {
        "run": str(run_dir),
        "halting": spec.halting.name,
        "scope": getattr(spec.halting, "scope", None),
        "difficulty": column,
        "examples": int(len(hops)),
        "accuracy": float(solved.mean()),
        "mean_hops": float(hops.mean()),
        "mean_hops_all_tokens": float(hops_all.mean()),
        "mean_layers": float(layers.mean()),
        "pearson_hops_difficulty": pearson(hops, level.astype(float)),
        "spearman_hops_difficulty": spearman(hops, level.astype(float)),
        "spearman_all_tokens_difficulty": spearman(hops_all, level.astype(float)),
        "per_difficulty": per_level,
    }


def format_table(results: list[dict]) -> str:
    lines = [
        "| run | halting | accuracy | mean hops (scored / all tokens) | Pearson r | Spearman rho"
        " (scored / all tokens) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {Path(r['run']).name} | {r['halting']} ({r['scope']}) | {r['accuracy']:.3f} | "
            f"{r['mean_hops']:.2f} / {r['mean_hops_all_tokens']:.2f} | {r['pearson_hops_difficulty']:.2f} | "
            f"{r['spearman_hops_difficulty']:.2f} / {r['spearman_all_tokens_difficulty']:.2f} |"
        )
    lines.append("")
    for r in results:
        cells = ", ".join(
            f"{k}: {v['mean_hops']:.2f} / {v['accuracy']:.2f} (n={v['examples']})"
            for k, v in r["per_difficulty"].items()
        )
        lines.append(f"- {Path(r['run']).name} ({r['difficulty']}: scored-position hops / accuracy): {cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--difficulty", default=None, help="slice column used as difficulty")
    parser.add_argument("--json", type=Path, default=None, help="write the full summary here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = [analyze_run(run, args.difficulty) for run in args.runs if (run / "spec.yaml").exists()]
    if not results:
        print("no run directories with a spec.yaml given", file=sys.stderr)
        return 1
    print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
