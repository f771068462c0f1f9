"""Halting artifacts of a finished run: halting.json and a heatmap of hops by position.

halting.json (one entry per evaluated split, plus run-level fields):

    strategy, scope, n_layers, n_sites
    hop_cap      hops a token may take per ponder site (max_hops of the site)
    layer_cap    layer applications a token may take in the whole model
    <split>:     mean_hops, mean_hops_saved (= hop_cap - mean_hops), mean_layers,
                 mean_layers_saved, position_mean_hops, position_hops_saved,
                 hop_histogram (rounded hops -> token count)
    heatmap:     file name, and the hops (B, L) of the plotted test batch (null = padding)

halting_hops.png: hops per token for a batch of test examples (rows) by position
(columns), scored positions marked; below it, mean hops per position for each
split against the cap, and the hop histogram.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import checkpoint as ckpt
from .interfaces import IGNORE_INDEX

if TYPE_CHECKING:
    from .model import PonderModel
    from .trainer import Trainer

HEATMAP_FILE = "halting_hops.png"
SPLITS = ("validation", "test")


def hop_caps(model: PonderModel) -> tuple[float, float]:
    """(hops a token may take per site, layer applications it may take in the model)."""
    if model.scope == "depth":  # a token may run every distinct layer once
        return float(model.n_layers), float(model.n_layers)
    hop_cap = float(max(site.max_hops() for site in model.sites))
    return hop_cap, hop_cap * model.n_layers


def split_summary(profile: dict, results: dict, split: str, hop_cap: float, layer_cap: float) -> dict:
    """A split's halting profile with the compute saved against the caps."""
    means = profile.get("position_mean_hops", [])
    mean_hops = results.get(f"{split}/mean_hops", float("nan"))
    mean_layers = results.get(f"{split}/mean_layers", float("nan"))
    return {
        "mean_hops": mean_hops,
        "mean_hops_saved": hop_cap - mean_hops,
        "mean_layers": mean_layers,
        "mean_layers_saved": layer_cap - mean_layers,
        "position_mean_hops": means,
        "position_hops_saved": [round(hop_cap - m, 6) for m in means],
        "hop_histogram": profile.get("hop_histogram", {}),
    }


@torch.no_grad()
def batch_hops(model: PonderModel, batch: dict[str, torch.Tensor], device, precision: str = "auto"):
    """Eval-mode hops (B, L) of one batch, with its mask and labels (all on CPU)."""
    from .training_step import autocast_for

    was_training = model.training
    model.eval()
    inputs = {k: v.to(device) for k, v in batch.items()}
    with autocast_for(device, precision):
        out = model(inputs["input_ids"], mask=inputs["mask"])
    model.train(was_training)
    return out.stats.hops.float().cpu(), batch["mask"].bool(), batch["labels"]


def plot_halting(
    path: Path,
    hops: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    summary: dict[str, Any],
    title: str,
) -> None:
    """Write the heatmap figure (hops by example x position) with per-position means and histogram."""
    import numpy as np
    from matplotlib.figure import Figure

    hop_cap = summary["hop_cap"]
    grid = np.where(mask.numpy(), hops.numpy(), np.nan)  # (B, L)
    fig = Figure(figsize=(11, 7.5), constrained_layout=True)
    spec = fig.add_gridspec(2, 2, height_ratios=[1.4, 1], width_ratios=[2.2, 1])
    ax = fig.add_subplot(spec[0, :])
    image = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis",
                      vmin=min(1.0, float(np.nanmin(grid))) if np.isfinite(grid).any() else 0.0,
                      vmax=hop_cap)
    scored_rows, scored_cols = np.nonzero((labels != IGNORE_INDEX).numpy())
    if len(scored_rows):
        ax.scatter(scored_cols, scored_rows, s=6, c="white", marker="o", linewidths=0,
                   label="scored position")
        ax.legend(loc="upper left", fontsize=8, framealpha=0.6)
    ax.set(xlabel="position in sequence", ylabel="test example",
           title=f"{title}: hops per token (eval mode, {grid.shape[0]} test examples)")
    fig.colorbar(image, ax=ax, pad=0.01).set_label(f"hops (cap {hop_cap:g})")

    means_ax = fig.add_subplot(spec[1, 0])
    for split in SPLITS:
        means = summary.get(split, {}).get("position_mean_hops", [])
        if means:
            means_ax.plot(means, marker=".", label=split)  # x: positions 0, 1, ...
    means_ax.axhline(hop_cap, color="grey", linestyle="--", linewidth=1, label="cap")
    means_ax.set(xlabel="position in sequence", ylabel="mean hops", ylim=(0, hop_cap * 1.08 + 0.05),
                 title="mean hops per position (hops saved = cap - mean)")
    means_ax.legend(fontsize=8)

    hist_ax = fig.add_subplot(spec[1, 1])
    histogram = summary.get("test", {}).get("hop_histogram", {})
    if histogram:
        keys = sorted(int(k) for k in histogram)
        total = sum(histogram.values())
        hist_ax.bar(keys, [histogram[str(k)] / total for k in keys], color="tab:blue")
        hist_ax.set_xticks(keys)
    hist_ax.set(xlabel="hops (rounded)", ylabel="fraction of test tokens",
                title="hop histogram (test)")
    fig.savefig(path, dpi=110)


def write_halting_artifacts(run_dir: Path, trainer: Trainer, results: dict[str, Any], examples: int = 32) -> dict:
    """Write halting.json and the heatmap PNG of a trained run; returns the JSON content."""
    model = trainer.model
    hop_cap, layer_cap = hop_caps(model)
    profiles = getattr(trainer, "halting_profiles", {}) or {}
    summary: dict[str, Any] = {
        "strategy": model.halting_config.name,
        "scope": model.scope,
        "n_layers": model.n_layers,
        "n_sites": len(model.sites),
        "hop_cap": hop_cap,
        "layer_cap": layer_cap,
    }
    for split in SPLITS:
        if split in profiles:
            summary[split] = split_summary(profiles[split], results, split, hop_cap, layer_cap)
    if len(trainer.test_data):
        batch = trainer.test_data.batch(range(min(examples, len(trainer.test_data))))
        hops, mask, labels = batch_hops(model, batch, trainer.device, trainer.config.precision)
        title = f"{summary['strategy']} ({summary['scope']} scope)"
        if summary["n_sites"] > 1:
            title += f", mean over {summary['n_sites']} layer sites"
        plot_halting(Path(run_dir) / HEATMAP_FILE, hops, mask, labels, summary, title)
        summary["heatmap"] = {
            "file": HEATMAP_FILE,
            "hops": [
                [round(float(h), 4) if m else None for h, m in zip(row, mrow, strict=True)]
                for row, mrow in zip(hops.tolist(), mask.tolist(), strict=True)
            ],
        }
    ckpt.atomic_write_text(Path(run_dir) / "halting.json", json.dumps(summary, indent=1))
    return summary
