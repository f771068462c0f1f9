"""PNG plots comparing runs (matplotlib, Agg backend, imported only when plotting).

Each function takes the runs of a report (`ponderlab.core.run_records.RunRecord`: task_label,
backbone, halting_key, label, results, profile(split), curve(split, key)) and a
target path, draws one figure, and returns [(title, path)] for what it wrote ([]
when there was nothing to draw). Colour encodes the backbone and line style /
marker the halting strategy, unless runs of one task share both (a sweep), in
which case every run gets its own colour and legend entry.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .run_records import group_by, is_finite_number

LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 3)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
HATCHES = ("", "//", "..", "xx", "\\\\", "++")
MAX_COLUMNS = 5


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _by_task(runs) -> dict[str, list]:
    return group_by(runs, lambda run: run.task_label)


class Encoding:
    """Colour/line style/marker per run, and the legend handles explaining them."""

    def __init__(self, runs):
        plt = _pyplot()
        palette = plt.get_cmap("tab10").colors
        keys = [(r.task_label, r.backbone, r.halting_key) for r in runs]
        self.per_run = len(set(keys)) < len(keys)
        if self.per_run:
            labels = list(dict.fromkeys(r.label for r in runs))
            many = plt.get_cmap("tab20").colors if len(labels) > 10 else palette
            self._color = {label: many[i % len(many)] for i, label in enumerate(labels)}
        else:
            backbones = list(dict.fromkeys(r.backbone for r in runs))  # report order
            haltings = list(dict.fromkeys(r.halting_key for r in sorted(runs, key=lambda r: r.halting_rank)))
            self._backbone = {b: palette[i % len(palette)] for i, b in enumerate(backbones)}
            self._halting = {h: i for i, h in enumerate(haltings)}

    def style(self, run) -> dict[str, Any]:
        if self.per_run:
            return {"color": self._color[run.label], "linestyle": "-", "marker": "o", "hatch": ""}
        index = self._halting[run.halting_key]
        return {"color": self._backbone[run.backbone], **_halting_style(index)}

    def legend_groups(self, kind: str = "line") -> list[tuple[list, list[str]]]:
        """Proxy artists explaining the encoding, in groups (backbones, haltings); kind: line, marker or bar."""
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch

        def proxy(color, solid_colour: bool, linestyle="-", marker=None, hatch=""):
            if kind == "bar":
                return Patch(facecolor=color if solid_colour else "white", edgecolor="black", hatch=hatch)
            if kind == "marker":
                return Line2D([], [], color=color, linestyle="none", marker=marker, markersize=7,
                              markeredgecolor="black", markeredgewidth=0.5)
            return Line2D([], [], color=color, linestyle=linestyle, marker=marker, markersize=4,
                          linewidth=2.5 if solid_colour else 1.5)

        if self.per_run:
            return [([proxy(c, True, marker="o") for c in self._color.values()], list(self._color))]
        marker = "o" if kind == "marker" else None  # a backbone: a solid line, or a dot
        backbones = (
            [proxy(color, True, marker=marker) for color in self._backbone.values()],
            [f"backbone: {b}" for b in self._backbone],
        )
        haltings = (
            [proxy("0.25", False, **_halting_style(i)) for i in self._halting.values()],
            [f"halting: {h}" for h in self._halting],
        )
        return [backbones, haltings]


def _halting_style(index: int) -> dict[str, Any]:
    """Line style, marker and bar hatch of the index-th halting strategy (cycling)."""
    return {
        "linestyle": LINESTYLES[index % len(LINESTYLES)],
        "marker": MARKERS[index % len(MARKERS)],
        "hatch": HATCHES[index % len(HATCHES)],
    }


LEGEND_ROW = 0.27  # inches per legend row


def _grid(plt, n_tasks: int, n_rows_per_task: int, width: float, height: float, encoding: Encoding):
    """Subplots: `n_rows_per_task` rows per task, tasks in blocks of MAX_COLUMNS; room for the
    legend.

    Returns the figure, each task's axes (top to bottom), and the (columns, rows) of each legend
    group, chosen so that a legend row fits the figure's width.
    """
    ncols = min(n_tasks, MAX_COLUMNS)
    blocks = math.ceil(n_tasks / ncols)
    fig_width = max(width * ncols, 6.0)
    layout = []
    for _, labels in encoding.legend_groups():
        entry = 0.075 * max(len(label) for label in labels) + 0.75  # inches at fontsize 9
        columns = max(1, min(len(labels), int(fig_width // entry)))
        layout.append((columns, math.ceil(len(labels) / columns)))
    legend_space = LEGEND_ROW * sum(rows for _, rows in layout) + 0.25
    nrows = blocks * n_rows_per_task
    fig_height = height * nrows + legend_space
    fig, axes = plt.subplots(nrows, ncols, figsize=(fig_width, fig_height), squeeze=False)
    # task t's axes: rows of block t // ncols, column t % ncols
    by_block = axes.reshape(blocks, n_rows_per_task, ncols)
    panels = [list(by_block[task // ncols, :, task % ncols]) for task in range(blocks * ncols)]
    for column in panels[n_tasks:]:  # unused cells of the last block
        for ax in column:
            ax.set_visible(False)
    return fig, panels[:n_tasks], layout


def _finish(plt, fig, encoding: Encoding, layout: list[tuple[int, int]], path: Path, kind: str = "line") -> None:
    """Legend groups stacked at the bottom (first group on top), tight layout above, save."""
    height = fig.get_figheight()
    y = 0.08 / height
    for (handles, labels), (columns, rows) in reversed(list(zip(encoding.legend_groups(kind), layout, strict=True))):
        fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, y), ncol=columns,
                   frameon=False, fontsize=9, handlelength=2.6, columnspacing=1.4, borderaxespad=0.1)
        y += LEGEND_ROW * rows / height
    fig.tight_layout(rect=(0, y + 0.05 / height, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- learning curves
def plot_learning_curves(runs, path: Path) -> list[tuple[str, Path]]:
    """Training task loss (log scale) and validation token accuracy against step, per task."""
    if not any(r.curve("train", "task_loss")[0] or r.curve("train", "loss")[0] for r in runs):
        return []
    plt = _pyplot()
    encoding = Encoding(runs)
    groups = _by_task(runs)
    fig, panels, layout = _grid(plt, len(groups), 2, 4.0, 2.9, encoding)
    for (top, low), (task, group) in zip(panels, groups.items(), strict=True):
        for run in group:
            style = encoding.style(run)
            steps, values = run.curve("train", "task_loss")
            if not steps:
                steps, values = run.curve("train", "loss")
            top.plot(steps, values, color=style["color"], linestyle=style["linestyle"], linewidth=1.4)
            steps, values = run.curve("validation", "token_accuracy")
            low.plot(steps, values, color=style["color"], linestyle=style["linestyle"],
                     marker=style["marker"], markersize=3.5, linewidth=1.4)
        top.set_title(task, fontsize=11)
        top.set(yscale="log", xlabel="step", ylabel="train task loss (log)")
        low.set(xlabel="step", ylabel="validation token accuracy", ylim=(-0.02, 1.02))
        for ax in (top, low):
            ax.grid(alpha=0.3)
    _finish(plt, fig, encoding, layout, path)
    return [("Learning curves", path)]


# --------------------------------------------------------------------------- Pareto view
def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by another with fewer-or-equal hops and higher-or-equal accuracy."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


#: x axes of the Pareto view: results.json key, axis label, figure title.
PARETO_AXES = {
    "hops": ("test/mean_hops", "mean hops per token (test)", "Accuracy vs mean hops (Pareto view)"),
    "layers": ("test/mean_layers", "mean layer applications per token (test)",
               "Accuracy vs mean layer applications (Pareto view)"),
}


def seed_groups(runs) -> list[tuple[Any, list]]:
    """Runs that differ only in their seed, as (representative, members) in report order.

    The representative is the first member with `seed=...` dropped from its variant, so its
    label names the configuration.
    """
    groups: dict[tuple, list] = {}
    for run in runs:
        variant = " ".join(t for t in run.variant.split() if not t.startswith("seed="))
        groups.setdefault((run.task_label, run.backbone, run.halting_key, variant), []).append(run)
    return [(replace(members[0], variant=key[3]), members) for key, members in groups.items()]


def plot_accuracy_vs_hops(runs, path: Path, x_axis: str = "hops", seeds: str = "each") -> list[tuple[str, Path]]:
    """Test token accuracy and exact match against test mean hops (or layers).

    `x_axis="layers"` puts each run at its mean layer applications per token
    (`test/mean_layers`, the compute spent) instead of its hops at one ponder site.
    `seeds="each"` draws one point per run; `seeds="mean"` one point per configuration
    (runs differing only in `seed`) at the mean over its seeds, with bars from the lowest
    to the highest seed on both axes; the Pareto front then joins the means.
    """
    x_key, x_label, title = PARETO_AXES[x_axis]
    usable = [r for r in runs if is_finite_number(r.results.get(x_key))]
    if not usable:
        return []
    units = seed_groups(usable) if seeds == "mean" else [(run, [run]) for run in usable]
    plt = _pyplot()
    encoding = Encoding([representative for representative, _ in units])
    tasks = list(_by_task(usable))
    fig, panels, layout = _grid(plt, len(tasks), 2, 4.0, 3.0, encoding)
    metrics = (("test/token_accuracy", "test token accuracy"), ("test/exact_match", "test exact match"))
    suffix = ", mean over seeds" if seeds == "mean" else ""
    for column, task in zip(panels, tasks, strict=True):
        for row, (ax, (key, name)) in enumerate(zip(column, metrics, strict=True)):
            points = []
            for representative, members in (u for u in units if u[0].task_label == task):
                pairs = [(float(m.results[x_key]), float(m.results[key])) for m in members
                         if is_finite_number(m.results.get(key))]
                if not pairs:
                    continue
                xs, ys = zip(*pairs, strict=True)
                x, y = sum(xs) / len(xs), sum(ys) / len(ys)
                style = encoding.style(representative)
                if len(pairs) > 1:
                    ax.errorbar([x], [y], xerr=[[x - min(xs)], [max(xs) - x]], yerr=[[y - min(ys)], [max(ys) - y]],
                                fmt="none", ecolor=style["color"], elinewidth=1, capsize=2, zorder=2)
                ax.scatter([x], [y], color=style["color"], marker=style["marker"], s=55,
                           edgecolors="black", linewidths=0.5, zorder=3)
                points.append((x, y))
            front = pareto_front(points)
            if len(front) > 1:
                fx, fy = zip(*front, strict=True)
                ax.step(fx, fy, where="post", color="0.5", linewidth=1, linestyle="--", zorder=2,
                        label="Pareto front")
                ax.legend(loc="lower right", fontsize=8, frameon=False)
            ax.set(xlabel=x_label, ylabel=name + suffix, ylim=(-0.03, 1.03))
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(task, fontsize=11)
    _finish(plt, fig, encoding, layout, path, kind="marker")
    return [(f"{title}, mean over seeds (bars: lowest to highest seed)" if seeds == "mean" else title, path)]


# --------------------------------------------------------------------------- hops by position
def _hop_image(fig, ax, hops, cmap: str, peak: float, label: str, fraction: float) -> None:
    """Hops (rows x positions, NaN where there is no token) as an image from 1 to `peak`,
    with a labelled colour bar."""
    import numpy as np

    image = ax.imshow(np.ma.masked_invalid(hops), aspect="auto", cmap=cmap, interpolation="nearest",
                      vmin=1.0, vmax=max(peak, 1.0 + 1e-6))
    fig.colorbar(image, ax=ax, pad=0.01, fraction=fraction).set_label(label, fontsize=8)


def _heatmap_runs(runs, has_data: Callable[[Any], bool]) -> list:
    chosen = [r for r in runs if r.adaptive and has_data(r)]
    return chosen or [r for r in runs if has_data(r)]


def plot_hops_by_position(runs, path: Path) -> list[tuple[str, Path]]:
    """Mean test hops at each position: one heatmap row per run, one panel per task.

    Only adaptive-halting runs are shown when there are any (fixed ones are constant).
    """
    from .evaluation import padded_rows

    chosen = _heatmap_runs(runs, lambda r: bool(r.profile("test").get("position_mean_hops")))
    if not chosen:
        return []
    plt = _pyplot()
    groups = _by_task(chosen)
    peak = max(max(r.profile("test")["position_mean_hops"]) for r in chosen)
    heights = [max(len(g), 1) * 0.42 + 1.0 for g in groups.values()]
    fig, axes = plt.subplots(len(groups), 1, figsize=(10, sum(heights) + 0.4), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (task, group) in zip(axes[:, 0], groups.items(), strict=True):
        matrix = padded_rows([r.profile("test")["position_mean_hops"] for r in group])
        _hop_image(fig, ax, matrix, "viridis", peak, "mean hops", fraction=0.04)
        ax.set_yticks(range(len(group)), [r.label for r in group], fontsize=8)
        ax.set_xlabel("position in sequence")
        ax.set_title(f"{task}: mean hops per position (test)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [("Mean hops by position", path)]


def plot_hop_heatmaps(runs, matrices: dict[int, tuple[Any, Any]], folder: Path) -> list[tuple[str, Path]]:
    """Per task, hops per (example, position) for each adaptive run with a hop matrix.

    `matrices` maps id(run) -> (hops (N, L) with NaN padding, scored (N, L) bool or None).
    A dashed line marks where the scored target starts when that is known.
    """
    import numpy as np

    chosen = [r for r in runs if id(r) in matrices]
    written = []
    plt = _pyplot()
    for task, group in _by_task(chosen).items():
        ncols = min(len(group), 2)
        nrows = math.ceil(len(group) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols, 3.3 * nrows), squeeze=False)
        peak = max(float(np.nanmax(matrices[id(r)][0])) for r in group)
        cells = list(axes.flat)  # row by row
        for ax, run in zip(cells, group, strict=False):
            hops, scored = matrices[id(run)]
            _hop_image(fig, ax, hops, "magma", peak, "hops (mean over sites)", fraction=0.05)
            if scored is not None and scored.any(axis=1).all():
                start = float(np.median(scored.argmax(axis=1)))
                ax.axvline(start - 0.5, color="cyan", linestyle="--", linewidth=1.2,
                           label="first scored position")
                ax.legend(loc="upper left", fontsize=7, framealpha=0.7)
            ax.set_title(f"{run.label} (mean {float(np.nanmean(hops)):.2f})", fontsize=10)
            ax.set(xlabel="position in sequence", ylabel="test example")
        for ax in cells[len(group):]:
            ax.set_visible(False)
        fig.suptitle(f"{task}: hops per example and position", fontsize=11)
        fig.tight_layout()
        target = folder / f"hop_heatmap_{safe_name(task)}.png"
        fig.savefig(target, dpi=110)
        plt.close(fig)
        written.append((f"Hop heatmap: {task}", target))
    return written


# --------------------------------------------------------------------------- histogram
def plot_hop_histogram(runs, path: Path) -> list[tuple[str, Path]]:
    """Share of test tokens per (rounded) hop count, grouped bars per run, one panel per task."""
    chosen = _heatmap_runs(runs, lambda r: bool(r.profile("test").get("hop_histogram")))
    if not chosen:
        return []
    plt = _pyplot()
    encoding = Encoding(chosen)
    groups = _by_task(chosen)
    fig, panels, layout = _grid(plt, len(groups), 1, 4.2, 3.2, encoding)
    for (ax,), (task, group) in zip(panels, groups.items(), strict=True):
        counts = [{int(k): v for k, v in r.profile("test")["hop_histogram"].items()} for r in group]
        hops = sorted(set().union(*counts))
        width = 0.8 / len(group)
        for i, (run, histogram) in enumerate(zip(group, counts, strict=True)):
            total = sum(histogram.values()) or 1
            xs = [h - 0.4 + width * (i + 0.5) for h in hops]
            ys = [histogram.get(h, 0) / total for h in hops]
            style = encoding.style(run)
            ax.bar(xs, ys, width=width, color=style["color"], edgecolor="black", linewidth=0.4,
                   hatch=style["hatch"])
        ax.set(xticks=hops, xlabel="hops per token (rounded mean over sites)",
               ylabel="share of test tokens", ylim=(0, 1.05))
        ax.set_title(task, fontsize=11)
        ax.grid(alpha=0.3, axis="y")
    _finish(plt, fig, encoding, layout, path, kind="bar")
    return [("Hop histogram", path)]


_SAFE = re.compile(r"[^A-Za-z0-9.-]+")


def safe_name(text: str) -> str:
    """A file-name-safe version of a label: `ca1d shifts=[1]` -> `ca1d_shifts_1`."""
    return _SAFE.sub("_", re.sub(r"[\[\]'\"]", "", text)).strip("_") or "run"
