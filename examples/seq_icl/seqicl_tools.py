"""Helpers of examples/seq_icl/reproduce.py: process timing, search results over seeds, curves.

A search whose grid includes `seed` is judged per setting (the searched keys other than
`seed`) by the mean over its seeds of the validation metric, ties broken by the worst seed
(settings with fewer completed seeds rank below);
a search without a seed axis is the special case of one seed per setting.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import yaml

from ponderlab.core.errors import SpecError
from ponderlab.core.spec import validate_spec

NICE = ["nice", "-n", "10"]
METRIC = "validation/exact_match"


def row_info(spec_path: Path) -> tuple[str, str]:
    """(task name, backbone name) of a row's spec."""
    config = yaml.safe_load(spec_path.read_text())
    return config["task"]["name"], config["backbone"]["name"]


def comparable(spec: dict) -> dict:
    """A spec as the schema resolves it (every default filled in), without the keys that do not
    change what is trained (name, output_dir): a key the schema gained after a spec or a run was
    written (training.curriculum, training.schedule, an LRU's scan_gradient) is absent from the
    older one and at its default in the newer, the same setting. A spec the schema refuses is
    compared as written, so it never equals a valid one."""
    try:
        resolved = validate_spec(copy.deepcopy(spec)).model_dump(mode="json")
    except SpecError:
        resolved = copy.deepcopy(spec)
    for key in ("name", "output_dir"):
        resolved.pop(key, None)
    return resolved


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds of the process and its reaped children), from /proc."""
    table, tick = {}, os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(entry)] = (int(fields[1]), sum(int(f) for f in fields[11:15]) / tick)
    return table


class CommandFailed(subprocess.CalledProcessError):
    """A timed command that exited non-zero (an interrupted search too), with the seconds it used."""

    def __init__(self, returncode: int, command: list[str], timing: dict):
        super().__init__(returncode, command)
        self.timing = timing


def timed(command: list[str], env: dict | None = None) -> dict:
    """Run a command (niced): CPU seconds of its whole process tree, and wall seconds
    (raised with CommandFailed when it exits non-zero, so that the time is not lost).

    Ray's workers are not reaped by the command itself, so the tree is sampled from /proc
    every 2 s and the last reading of every process in it is added up (user + system time,
    with the children each has reaped; up to 2 s of the end and processes that lived under
    2 s without being reaped are missed).
    """
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    process = subprocess.Popen(NICE + command, env=env)
    seen: dict[int, float] = {}
    while process.poll() is None:
        table = _proc_table()
        tree, frontier = set(), {process.pid}
        while frontier:
            tree |= frontier
            frontier = {pid for pid, (ppid, _) in table.items() if ppid in frontier} - tree
        for pid in tree & table.keys():
            seen[pid] = table[pid][1]
        time.sleep(2)
    timing = {"cpu_seconds": round(sum(seen.values()), 1), "wall_seconds": round(time.perf_counter() - started, 1)}
    if process.returncode != 0:
        raise CommandFailed(process.returncode, command, timing)
    return timing


def read_search(directory: Path) -> list[dict]:
    with open(directory / "results.csv") as handle:
        return list(csv.DictReader(handle))


def searched_keys(directory: Path) -> list[str]:
    """The keys a search varied (its tune spec's search section), `seed` included if searched."""
    spec = yaml.safe_load((directory / "tune_spec.yaml").read_text())
    return list((spec.get("search") or {}).keys())


def trial_seed(row: dict, directory: Path) -> int:
    """A trial's seed: the `seed` column of a seed-searching search, else the seed of its spec."""
    if row.get("seed") not in (None, ""):
        return int(float(row["seed"]))
    spec_file = directory / row["run_dir"] / "spec.yaml" if row.get("run_dir") else None
    if spec_file is not None and spec_file.exists():
        return int(yaml.safe_load(spec_file.read_text()).get("seed", 0))
    return 0


def settings(directory: Path) -> list[dict]:
    """The search's settings (searched values but the seed), best first, each with its trials.

    Each entry: config (key -> value as written in results.csv), trials (completed rows, each
    with its seed under "_seed"), values (validation metric per completed seed), mean, min,
    failed (trials that did not complete). Sorted by the number of seeds completed (a setting
    with a missing seed is not compared with complete ones on its mean), then by mean, then by
    the worst seed.
    """
    keys = [k for k in searched_keys(directory) if k != "seed"]
    groups: dict[tuple, dict] = {}
    for row in read_search(directory):
        config = tuple((k, row.get(k, "")) for k in keys)
        group = groups.setdefault(config, {"config": dict(config), "trials": [], "values": [], "failed": 0})
        value = row.get(METRIC)
        if row["status"] != "completed" or value in (None, ""):
            group["failed"] += 1
            continue
        group["trials"].append({**row, "_seed": trial_seed(row, directory)})
    for group in groups.values():
        group["trials"].sort(key=lambda r: r["_seed"])
        values = group["values"] = [float(t[METRIC]) for t in group["trials"]]
        group["mean"] = statistics.mean(values) if values else float("nan")
        group["min"] = min(values) if values else float("nan")
    ranked = [g for g in groups.values() if g["values"]]
    ranked.sort(key=lambda g: (-len(g["values"]), -g["mean"], -g["min"]))
    return ranked + [g for g in groups.values() if not g["values"]]


def describe(config: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items()) or "the spec as it is"


def settings_markdown(directory: Path) -> str:
    """The search's settings over seeds as a markdown table (best first)."""
    lines = ["", f"Settings over seeds (by mean {METRIC}, ties by the worst seed; chosen: the first):", "",
             "| setting | seeds | validation exact match per seed | mean | min | test exact match per seed |",
             "|---|---|---|---|---|---|"]
    for group in settings(directory):
        seeds = ", ".join(str(t["_seed"]) for t in group["trials"]) + (
            f" ({group['failed']} failed)" if group["failed"] else "")
        val = ", ".join(f"{v:.3f}" for v in group["values"])
        test = ", ".join(f"{float(t['test/exact_match']):.3f}" for t in group["trials"] if t.get("test/exact_match"))
        lines.append(f"| {describe(group['config'])} | {seeds} | {val} | {group['mean']:.3f} | {group['min']:.3f} "
                     f"| {test} |")
    return "\n".join(lines) + "\n"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def curve_points(run_dir: Path) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for record in read_jsonl(run_dir / "metrics.jsonl"):
        if record.get("split") == "validation" and "exact_match" in record:
            steps.append(int(record["step"]))
            values.append(100 * float(record["exact_match"]))
    return steps, values


def plot_curves(path: Path, title: str, runs: dict[str, Path], reference: float | None, chance: float) -> Path:
    """Validation exact match against step, one line per run, into `path` (png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for label, run_dir in runs.items():
        steps, values = curve_points(run_dir)
        if steps:
            ax.plot(steps, values, marker="o", ms=3, label=label)
    if reference is not None:
        ax.axhline(reference, ls="--", color="k", lw=1, label=f"seq_icl {reference:.1f}")
    ax.axhline(chance, ls=":", color="grey", lw=1, label=f"chance {chance:.1f}")
    ax.set_xlabel("step")
    ax.set_ylabel("validation exact match (%)")
    ax.set_ylim(0, 102)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
