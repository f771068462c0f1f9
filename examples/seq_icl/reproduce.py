"""seq_icl at CPU scale, one command: search, write back, seeds, table, curves.

    python examples/seq_icl/reproduce.py [--only GLOB ...] [--skip-search] [--seeds N] [--parallel N]
                                         [--output-dir runs/seq_icl] [--table-only] [--dry-run]
                                         [--extra NAME ...] [--adopt NAME ...]

For every example spec `<task>_<backbone>.yaml` in this folder (a row of seq_icl's
table; `--only` picks rows by glob on the stem, e.g. `--only 'associative_recall_*'`):

1. search: a small `ponderlab tune` search (SEARCH below: the settings every trial
   of that task shares, and the searched keys, which may include `seed`) on the row's
   spec, 1 CPU per trial, --parallel trials at a time, into OUT/search/<row>/. The
   process-tree CPU seconds of the search go to OUT/search/<row>.budget.json.
2. write back: the best setting becomes the row's example spec (seed 0), with a header
   saying where it came from. A setting is judged by the mean over its seeds of the
   validation exact match, ties broken by its worst seed (seqicl_tools.settings); a
   search without a seed axis has one seed per setting.
3. seeds: the written-back spec with seeds 0..N-1 (`ponderlab run SPEC seed=S`) into
   OUT/seeds/<row>/seed<S>/. A seed that the search already trained with the same
   spec is copied from its trial, not trained again.
4. table: docs/results/seq_icl/table.md and table.json (mean and spread of test
   exact match over the seeds beside seq_icl's number, the settings searched) and, for
   rows below their target, the learning curves docs/results/seq_icl/curve_<row>.png;
   every search's own table with its settings over seeds, docs/results/seq_icl/search_<row>.md.

Follow-ups: `--extra NAME` runs examples/seq_icl/tune_NAME.yaml into OUT/tried/NAME (CPU time
recorded); `--only ROW --adopt NAME [--adopt NAME2]` makes the follow-ups' one setting (their
seeds pooled) the row's spec and seeds if it beats the row's seeds by the same rule (adopt()).

Everything is resumable: a search whose results.csv lists only completed trials is
not searched again (an interrupted one is continued with `ponderlab tune DIR --resume`),
a seed whose run directory holds results.json is not trained again. `--skip-search`
uses the example spec as it is (for rows never searched, or to add seeds). With `--only`,
the table is rewritten for the named rows only: the other rows are kept from table.json
(`--table-only --only ROW` regenerates one row from a partial copy of runs/). Every
training process runs under `nice -n 10` (`--nice`) with one torch thread.
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import json
import math
import os
import re
import shutil
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# seqicl_tools.py is a module next to this script (examples/ is not a package)
import seqicl_tools  # noqa: E402
from seqicl_tools import describe, plot_curves, read_search, settings, settings_markdown, timed  # noqa: E402

ROOT = HERE.parent.parent
DOCS = ROOT / "docs" / "results" / "seq_icl"

#: seq_icl README (commit ec42595), test accuracy (%), 2 layers d=32, 400 epochs (GPU).
REFERENCE = {
    "associative_recall": {
        "transformer": 100.0, "s4d": 32.4, "h3": 98.2, "gilr": 50.2, "lru": 11.6, "lstm": 36.2, "rwkv": 30.0,
    },
    "induction_head": {
        "transformer": 97.2, "s4d": 8.8, "h3": 100.0, "gilr": 6.2, "lru": 4.8, "lstm": 4.8, "rwkv": 6.0,
    },
}
CHANCE = {"associative_recall": 100 / 9, "induction_head": 100 / 18}
#: issue 30's targets: (at least %) for the strong rows, "clearly below" (at most %) for the weak ones.
TARGET_MIN = {("associative_recall", "transformer"): 95.0, ("associative_recall", "h3"): 95.0,
              ("induction_head", "transformer"): 90.0, ("induction_head", "h3"): 90.0}
#: "Clearly below" is not a number in issue 30; 80% (15 points under the 95% target) is this study's.
TARGET_MAX = {("associative_recall", b): 80.0 for b in ("lru", "lstm", "rwkv", "s4d")}

#: The CPU-scale search per task: `set` is applied to the row's spec for every trial (dotted
#: keys), `search` is the tune spec's search section, `by_backbone` adds per-backbone settings.
#: Width 64 (seq_icl: 32) is what makes the transformer learn associative recall within a few
#: thousand steps (issue 30); warmup is seq_icl's 10% of the steps.
SEARCH = {
    "associative_recall": {
        # 2500 steps (warmup 250) left the transformer at 29-36% (tried, runs/seq_icl/tried/): its
        # phase transition comes later; 3000 steps with warmup 150 is the setting issue 30 saw at 100%.
        "set": {"backbone.d_model": 64, "training.steps": 3000, "training.warmup_steps": 150,
                "training.eval_every": 500, "training.batch_size": 32, "training.weight_decay": 0.1},
        "search": {"training.lr": {"grid": [1.0e-3, 3.0e-3]}},
        "by_backbone": {"transformer": {
            # lr 1e-3 at 3000 steps: seeds 0/1/2 at 100/44/39% (seed 0 alone chose it); 6000 steps
            # rescued seed 1 only (runs/seq_icl/tried/). So: higher lr, 4000 steps, chosen over 3 seeds.
            "set": {"backbone.n_heads": 4, "backbone.ffn_size": 256, "training.steps": 4000,
                    "training.warmup_steps": 200},
            "search": {"training.lr": {"grid": [2.0e-3, 3.0e-3]}, "seed": {"grid": [0, 1, 2]}}},
            # lr 1e-3 at 3000 steps (chosen over 3e-3 on seed 0): test 87.8, 89.4, 69.8%, every seed
            # still rising at step 3000 with no jump (runs/seq_icl/tried/associative_recall_h3_steps3000_seed0_search,
            # docs/results/seq_icl/curve_superseded_associative_recall_h3_steps3000.png). So: twice the
            # steps (warmup 5%), chosen over 3 seeds. That search ran lr 1e-3 only (validation 81.2,
            # 96.4, 93.2%, runs/seq_icl/search/associative_recall_h3); lr 2e-3 over the same seeds
            # (the follow-up tune_ar_h3_lr2e-3_steps6000.yaml: 98.2, 97.4, 97.2%) replaced it by
            # `--adopt`. A from-scratch run searches both here; the committed row comes from the two
            # runs above (the table says which), not from this grid run as one search.
            "h3": {"set": {"training.steps": 6000, "training.warmup_steps": 300},
                   "search": {"training.lr": {"grid": [1.0e-3, 2.0e-3]}, "seed": {"grid": [0, 1, 2]}}}},
    },
    "induction_head": {
        # issue 30: width 64, 4 heads, lr 5e-4, 100k training sequences: chance until ~10k steps,
        # 100% by 16k (about 6 CPU-min on an idle core). Each trial costs about that.
        "set": {"backbone.d_model": 64, "task.train_size": 100000, "training.steps": 20000,
                "training.warmup_steps": 2000, "training.eval_every": 2000, "training.batch_size": 32,
                "training.weight_decay": 0.1},
        "search": {"training.lr": {"grid": [5.0e-4, 1.0e-3]}},
        # transformer, lr 5e-4 (warmup 1000; the row's spec, run with `--skip-search`): test 89.4,
        # 100.0, 79.2%, each seed leaving chance at a different step. lr 1e-3 at seed 0 stayed at
        # chance for all 20000 steps (runs/seq_icl/tried/ih_transformer_lr1e-3_search, stopped after
        # it: its 3-seed mean could no longer beat lr 5e-4's). 25000 steps at lr 5e-4 over seeds
        # 0-2 (tune_ih_transformer_steps25000{,_seed1}.yaml: validation 96.6, 100, 82.0%, test
        # 94.8, 100, 79.4%) beat 20000 steps on the mean and is the row's spec (--adopt). The full
        # search, seed-aware (6 trials, ~50 CPU-min at 20000 steps; not run), chooses between the lrs:
        "by_backbone": {"transformer": {
            "set": {"backbone.n_heads": 4, "backbone.ffn_size": 256, "training.warmup_steps": 1000},
            "search": {"training.lr": {"grid": [5.0e-4, 1.0e-3]}, "seed": {"grid": [0, 1, 2]}}},
            # H3 (seq_icl: 100% at lr 5e-4, 62.8k steps, d=32): 37 ms a step at width 64 on one
            # idle core (a 500-step probe). On associative recall H3 wanted 2x the transformer's lr
            # (2e-3 over 1e-3 at 6000 steps, 3 seeds), so lr {1e-3, 2e-3} x seeds {0, 1, 2}. First
            # at the task's 20000 steps (warmup 2000), stopped at step ~2000 (the machine was at load
            # 30-70, 12 wall-min per 1000 steps, so 20000 steps could not finish in the session):
            # lr 1e-3 seed 1 was at validation 100% at step 2000 (still in warmup), seed 0 at 19.8%
            # and leaving chance (runs/seq_icl/tried/ih_h3_lr1e-3_steps20000_stopped). The curve says
            # H3 needs far fewer steps than the transformer here, so the search runs 5000 steps
            # (warmup 500, 10%), 2.5x the step where the first seed had jumped. lr 5e-4 (seq_icl's,
            # the transformer's here) is not in it (see docs/results.md). Result: lr 1e-3 (validation
            # 100, 100, 22.4%) over 2e-3 (94.0, 100, 5.0%); 10000 steps at lr 1e-3 (the follow-up
            # tune_ih_h3_steps10000.yaml: 92.4, 100, 100%) replaced it by `--adopt`.
            "h3": {"set": {"training.steps": 5000, "training.warmup_steps": 500, "training.eval_every": 500},
                   "search": {"training.lr": {"grid": [1.0e-3, 2.0e-3]}, "seed": {"grid": [0, 1, 2]}}},
            # The five rows seq_icl has at (or near) chance: S4D, RWKV, LRU, GILR, RetNet (seqicl7
            # session). Timed first (300-step probes at width 64, 100k sequences, one core shared at
            # load 3-4): about 29 (S4D, GILR), 31 (LRU), 37 (RetNet) and 49 (RWKV) CPU-ms a step,
            # so the LSTM row's 20000 steps would cost ~237 CPU-min for the 5 rows (2 lrs at seed 0,
            # then seeds 1-2), which the session (under 2 wall-hours, 1 process, a shared core)
            # could not hold. So H3's search length, 5000 steps (warmup 500, 10%), and its lr grid
            # {1e-3, 2e-3} (a shorter schedule than the LSTM's 20000, so the higher lrs), at seed 0;
            # ~64 CPU-min for the 5 rows. H3 left chance at steps 1000-3000 at this length, the
            # LSTM (20000-step schedule) at 4000-6000: a row at chance here is at chance at 5000
            # steps, and its learning curve says whether it was still moving.
            **{b: {"set": {"training.steps": 5000, "training.warmup_steps": 500, "training.eval_every": 500},
                   "search": {"training.lr": {"grid": [1.0e-3, 2.0e-3]}}}
               for b in ("s4d", "rwkv", "lru", "gilr", "retnet")}},
    },
}
TUNE = {"metric": "validation/exact_match", "mode": "max", "scheduler": "fifo", "max_concurrent_trials": 2,
        "resources": {"cpu": 1, "gpu": 0}, "keep_checkpoints": 1, "verbose": 0}
PARALLEL = 1  # training processes at once (searches: tune.max_concurrent_trials); --parallel
#: Row order: the rows with targets first.
ORDER = ["transformer", "h3", "lstm", "s4d", "lru", "rwkv", "gilr", "retnet"]


def set_dotted(spec: dict, key: str, value) -> None:
    *parents, leaf = key.split(".")
    node = spec
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def row_info(spec_path: Path) -> tuple[str, str]:
    config = yaml.safe_load(spec_path.read_text())
    return config["task"]["name"], config["backbone"]["name"]


def search_spec(spec_path: Path, out: Path) -> dict:
    """The tune spec of a row: its example spec, the task's shared settings, the search."""
    task, backbone = row_info(spec_path)
    base = yaml.safe_load(spec_path.read_text())
    plan = SEARCH[task]
    settings = {**plan["set"], **plan.get("by_backbone", {}).get(backbone, {}).get("set", {})}
    for key, value in settings.items():
        set_dotted(base, key, value)
    base["seed"] = 0
    base["training"]["num_threads"] = 1
    base["training"]["device"] = "cpu"
    base["search"] = copy.deepcopy(plan.get("by_backbone", {}).get(backbone, {}).get("search", plan["search"]))
    base["tune"] = {**TUNE, "max_concurrent_trials": PARALLEL, "storage_path": str(out / "search"),
                    "name": spec_path.stem}
    return base


def search_done(directory: Path) -> bool:
    if not (directory / "results.csv").exists():
        return False
    rows = read_search(directory)
    return bool(rows) and all(r["status"] in ("completed", "stopped", "error") for r in rows)


def run_search(spec_path: Path, out: Path, dry_run: bool) -> None:
    directory = out / "search" / spec_path.stem
    budget_file = out / "search" / f"{spec_path.stem}.budget.json"
    if search_done(directory):
        return
    resuming = (directory / "tune_spec.yaml").exists()
    tune_file = out / "search" / f"{spec_path.stem}.tune.yaml"
    if not resuming:
        tune_file.parent.mkdir(parents=True, exist_ok=True)
        tune_file.write_text(yaml.safe_dump(search_spec(spec_path, out), sort_keys=False))
    command = ["ponderlab", "tune", str(directory if resuming else tune_file)]
    command += ["--resume"] if resuming else (["--dry-run"] if dry_run else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    timing = timed(command, env)
    if dry_run:
        return
    earlier = json.loads(budget_file.read_text()) if budget_file.exists() else {"cpu_seconds": 0, "wall_seconds": 0}
    budget_file.write_text(json.dumps({k: round(earlier[k] + timing[k], 1) for k in timing}, indent=1))


def run_extra(spec_path: Path, out: Path, dry_run: bool) -> None:
    """A follow-up search (its own tune spec) into OUT/tried/<name>, with its CPU time."""
    name = yaml.safe_load(spec_path.read_text())["name"]
    directory = out / "tried" / name
    budget_file = out / "tried" / f"{name}.budget.json"
    if search_done(directory):
        return
    resuming = (directory / "tune_spec.yaml").exists()
    command = ["ponderlab", "tune", str(directory) if resuming else str(spec_path),
               *([] if resuming else [f"tune.storage_path={out / 'tried'}"])]
    command += ["--resume"] if resuming else (["--dry-run"] if dry_run else [])
    timing = timed(command, {**os.environ, "OMP_NUM_THREADS": "1"})
    if not dry_run:
        earlier = json.loads(budget_file.read_text()) if budget_file.exists() else {"cpu_seconds": 0, "wall_seconds": 0}
        budget_file.write_text(json.dumps({k: round(earlier[k] + timing[k], 1) for k in timing}, indent=1))


def best_setting(directory: Path) -> dict | None:
    """The search's chosen setting (best mean over seeds, see seqicl_tools.settings), or None."""
    if not (directory / "results.csv").exists():
        return None
    ranked = settings(directory)
    return ranked[0] if ranked and ranked[0]["trials"] else None


def write_back(spec_path: Path, out: Path) -> None:
    """The chosen setting's spec (seed 0) becomes the row's example spec."""
    directory = out / "search" / spec_path.stem
    best = best_setting(directory)
    if best is None:
        return
    spec = yaml.safe_load((directory / best["trials"][0]["run_dir"] / "spec.yaml").read_text())
    spec.pop("output_dir", None)
    spec = {"name": yaml.safe_load(spec_path.read_text())["name"], **spec, "seed": 0}
    tried = "; ".join(
        f"{describe(g['config'])} -> val {', '.join(f'{v:.3f}' for v in g['values']) or 'failed'}"
        f" (seeds {', '.join(str(t['_seed']) for t in g['trials'])})" for g in settings(directory))
    task, backbone = row_info(spec_path)
    header = (
        f"# seq_icl {task.replace('_', ' ')}, {backbone}: the best setting of a `ponderlab tune` search\n"
        f"# (by the mean over its seeds of validation exact match), written by examples/seq_icl/reproduce.py\n"
        f"# (do not edit by hand; rerun the search instead).\n"
        f"# Search ({len(read_search(directory))} trials): {tried}\n"
        f"# Results over seeds: docs/results/seq_icl/table.md\n"
    )
    text = header + yaml.safe_dump(spec, sort_keys=False)
    if spec_path.read_text() != text:
        spec_path.write_text(text)


def comparable(spec: dict) -> dict:
    spec = copy.deepcopy(spec)
    for key in ("name", "output_dir"):
        spec.pop(key, None)
    return spec


def flat(spec: dict, prefix: str = "") -> dict:
    """A spec as dotted key -> value (nested sections flattened)."""
    items = {}
    for key, value in spec.items():
        if isinstance(value, dict):
            items.update(flat(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = value
    return items


def adopt(spec_path: Path, out: Path, names: list[str], seeds: int) -> bool:
    """Make the follow-ups OUT/tried/NAME (one setting, its seeds possibly split over several
    follow-ups) the row's setting if it beats the row's seeds in OUT/seeds/<row> by the rule of
    seqicl_tools.settings (mean over seeds 0..N-1 of validation exact match, ties by the worst
    seed; a tie keeps the row). A single follow-up may search several settings (e.g. heads
    x seeds): its best setting by the same rule is the candidate, and the others are named in
    the header. Then the row's seeds move to OUT/superseded/, the follow-ups'
    trials are copied in as its seeds, and the row's example spec is the follow-ups' spec (seed
    0) with both settings in its header. Returns whether it adopted."""
    stem = spec_path.stem
    trials: dict[int, Path] = {}
    others: list[str] = []  # a single follow-up's settings that are not its best
    for name in names:
        directory = out / "tried" / name
        ranked = settings(directory)
        if len(names) == 1 and len(ranked) > 1:
            others = [f"{describe(g['config'])} -> val {', '.join(f'{v:.3f}' for v in g['values']) or 'failed'}"
                      for g in ranked[1:]]
            ranked = ranked[:1]
        for group in ranked:
            for trial in group["trials"]:
                if int(trial["_seed"]) in trials:
                    raise SystemExit(f"--adopt: seed {trial['_seed']} is in more than one follow-up ({names})")
                trials[int(trial["_seed"])] = directory / trial["run_dir"]
    new_specs = {s: yaml.safe_load((d / "spec.yaml").read_text()) for s, d in trials.items()}
    if len({json.dumps(comparable({**v, "seed": 0}), sort_keys=True) for v in new_specs.values()}) > 1:
        raise SystemExit(f"--adopt: the follow-ups {names} hold more than one setting")
    wanted = list(range(seeds))
    current_dir = out / "seeds" / stem
    current = {s: current_dir / f"seed{s}" for s in wanted if (current_dir / f"seed{s}" / "results.json").exists()}
    missing = [s for s in wanted if s not in trials] + [s for s in wanted if s not in current]
    if missing:
        print(f"--adopt {stem}: seeds {sorted(set(missing))} missing (follow-ups or row); not compared")
        return False
    # The row's seeds must be runs of the row's spec: a copy of runs/ can hold an older setting's
    # seeds (it did: runs/ from /work/main held the lr 1e-3, 3000-step transformer seeds under the
    # lr 3e-3, 4000-step row), and comparing with those would adopt on a stale baseline.
    row_now = comparable({**yaml.safe_load(spec_path.read_text()), "seed": 0})
    stale = [s for s in wanted
             if comparable({**yaml.safe_load((current[s] / "spec.yaml").read_text()), "seed": 0}) != row_now]
    if stale:
        raise SystemExit(f"--adopt {stem}: the seeds {stale} in {current_dir} were not trained with the row's spec "
                         f"{spec_path.name} (a stale copy of runs/?); not compared")

    def val(run_dir: Path) -> float:
        return float(json.loads((run_dir / "results.json").read_text())[seqicl_tools.METRIC])

    old_vals = [val(current[s]) for s in wanted]
    new_vals = [val(trials[s]) for s in wanted]
    if (statistics.mean(new_vals), min(new_vals)) <= (statistics.mean(old_vals), min(old_vals)):
        print(f"--adopt {stem}: the row's setting stays (validation mean {statistics.mean(old_vals):.3f}, "
              f"follow-ups {statistics.mean(new_vals):.3f}"
              + "".join(f"; also not chosen: {o}" for o in others) + ")")
        return False
    old_spec = yaml.safe_load(spec_path.read_text())
    new_spec = new_specs[0]
    for key in ("output_dir", "name"):  # the row keeps its name
        new_spec.pop(key, None)
    new_spec = {"name": old_spec["name"], **new_spec, "seed": 0}
    # both settings as their runs resolved them (defaults filled in), so only real differences show
    old_run_spec = yaml.safe_load((current[0] / "spec.yaml").read_text())
    old_flat, new_flat = flat(comparable({**old_run_spec, "seed": 0})), flat(comparable(new_spec))
    changed = sorted(k for k in set(old_flat) | set(new_flat) if old_flat.get(k) != new_flat.get(k))

    def setting(values: dict) -> str:
        return ", ".join(f"{k}={values.get(k, '-')}" for k in changed)

    steps = old_spec["training"]["steps"]
    aside = out / "superseded" / f"{stem}_lr{old_spec['training']['lr']:g}_steps{steps}"
    if aside.exists():
        raise SystemExit(f"--adopt: {aside} exists already; move it away first")
    aside.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(current_dir), str(aside))
    for seed in wanted:
        run_dir = current_dir / f"seed{seed}"
        run_dir.mkdir(parents=True)
        for name in ("spec.yaml", "metrics.jsonl", "results.json"):
            shutil.copy(trials[seed] / name, run_dir / name)
        (run_dir / "source.txt").write_text(f"copied from the follow-up trial {trials[seed]}\n")
    header = (
        f"# seq_icl {row_info(spec_path)[0].replace('_', ' ')}, {row_info(spec_path)[1]}: the better of two settings over seeds "
        f"{', '.join(map(str, wanted))}\n"
        f"# (by the mean over the seeds of validation exact match, ties by the worst seed), written by\n"
        f"# examples/seq_icl/reproduce.py --adopt {' --adopt '.join(names)} (do not edit by hand).\n"
        f"# Chosen, the follow-ups {', '.join(names)}: {setting(new_flat)} -> val "
        f"{', '.join(f'{v:.3f}' for v in new_vals)}\n"
        f"# Replaced, the row's earlier spec (its seeds: {aside.relative_to(out.parent)}): {setting(old_flat)} -> val "
        f"{', '.join(f'{v:.3f}' for v in old_vals)}\n"
        + "".join(f"# Also in the follow-up, not chosen: {o}\n" for o in others)
        + "# Results over seeds: docs/results/seq_icl/table.md\n"
    )
    spec_path.write_text(header + yaml.safe_dump(new_spec, sort_keys=False))
    print(f"--adopt {stem}: adopted {names} ({setting(new_flat)}); earlier seeds in {aside}")
    return True


def run_seeds(spec_path: Path, out: Path, seeds: int, dry_run: bool) -> None:
    """Seeds 0..N-1 of the example spec; a search trial with the same spec and seed is copied."""
    spec = yaml.safe_load(spec_path.read_text())
    directory = out / "search" / spec_path.stem
    best = best_setting(directory)
    trials = {t["_seed"]: directory / t["run_dir"] for t in best["trials"]} if best else {}
    todo = []
    for seed in range(seeds):
        run_dir = out / "seeds" / spec_path.stem / f"seed{seed}"
        if (run_dir / "results.json").exists():
            continue
        trial = trials.get(seed)
        if trial is not None and (trial / "results.json").exists():
            trial_spec = yaml.safe_load((trial / "spec.yaml").read_text())
            if comparable(trial_spec) == comparable({**spec, "seed": seed}):
                run_dir.mkdir(parents=True, exist_ok=True)
                for name in ("spec.yaml", "metrics.jsonl", "results.json"):
                    shutil.copy(trial / name, run_dir / name)
                (run_dir / "source.txt").write_text(f"copied from the search trial {trial}\n")
                continue
        todo.append((seed, run_dir))
    if dry_run:
        for seed, run_dir in todo:
            print(f"would run {spec_path.name} seed={seed} -> {run_dir}")
        return

    def one(item: tuple[int, Path]) -> None:
        seed, run_dir = item
        if run_dir.exists():
            shutil.rmtree(run_dir)  # an interrupted run: start it again
        timing = timed(["ponderlab", "run", str(spec_path), f"seed={seed}", "--output-dir", str(run_dir),
                        "--no-progress"], {**os.environ, "OMP_NUM_THREADS": "1"})
        (run_dir / "process_time.json").write_text(json.dumps(timing, indent=1))

    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        list(pool.map(one, todo))


def summarize(spec_path: Path, out: Path) -> dict | None:
    task, backbone = row_info(spec_path)
    stem = spec_path.stem
    seed_dirs = sorted(d for d in (out / "seeds" / stem).glob("seed*") if (d / "results.json").exists())
    search_dir = out / "search" / stem
    budget_file = out / "search" / f"{stem}.budget.json"
    search_rows = read_search(search_dir) if (search_dir / "results.csv").exists() else []
    if not seed_dirs and not search_rows:
        return None
    spec = yaml.safe_load(spec_path.read_text())
    accs, cpu, seeds = [], [], []
    for d in seed_dirs:
        results = json.loads((d / "results.json").read_text())
        accs.append(100 * results["test/exact_match"])
        seeds.append(int(d.name.removeprefix("seed")))
        timing = d / "process_time.json"
        if timing.exists():
            cpu.append(json.loads(timing.read_text())["cpu_seconds"])
    backbone_cfg = spec["backbone"]
    width = backbone_cfg.get("d_model")
    heads = backbone_cfg.get("n_heads")
    row = {
        "row": stem, "task": task, "backbone": backbone, "width": width, "heads": heads,
        "lr": spec["training"]["lr"], "steps": spec["training"]["steps"],
        "train_size": spec["task"].get("train_size"), "seeds": seeds, "test_exact_match": accs,
        "mean": statistics.mean(accs) if accs else None,
        "min": min(accs) if accs else None, "max": max(accs) if accs else None,
        "std": statistics.stdev(accs) if len(accs) > 1 else None,
        "reference": REFERENCE.get(task, {}).get(backbone), "chance": CHANCE[task],
        "search_trials": len(search_rows),
        "search_cpu_seconds": json.loads(budget_file.read_text())["cpu_seconds"] if budget_file.exists() else None,
        "search_trial_seconds": round(sum(float(r.get("time/seconds") or 0) for r in search_rows), 1),
        "seed_cpu_seconds_each": round(statistics.mean(cpu), 1) if cpu else None,
        "seed_cpu_seconds": round(sum(cpu), 1),  # seeds trained here (copied search trials: in the search)
        "search": [{k: v for k, v in r.items() if k.startswith(("training.", "backbone.", "task.", "validation/",
                                                                 "test/", "status", "time/"))} for r in search_rows],
    }
    low, high = TARGET_MIN.get((task, backbone)), TARGET_MAX.get((task, backbone))
    row["target"] = f">= {low:.0f}" if low else (f"< {high:.0f}" if high else "-")
    met = None
    if row["mean"] is not None and (low or high):
        met = row["mean"] >= low if low else row["mean"] < high
    row["target_met"] = met if len(accs) >= 3 else None  # no claim from fewer than 3 seeds
    ranked = settings(search_dir) if search_rows else []
    row["searched"] = "; ".join(
        f"{describe(g['config'])}: {fmt(100 * g['mean'])} (n={len(g['values'])})" for g in ranked if g["values"])
    # seeds adopted from follow-ups (--adopt): the row's setting is the follow-ups', not the search's
    adopted = sorted({m.group(1) for d in seed_dirs if (d / "source.txt").exists()
                      for m in [re.search(r"/tried/([^/]+)/runs/", (d / "source.txt").read_text())] if m})
    row["adopted_from"] = adopted
    if adopted:
        vals = [100 * json.loads((d / "results.json").read_text())[seqicl_tools.METRIC] for d in seed_dirs]
        budgets = [out / "tried" / f"{n}.budget.json" for n in adopted]
        row["adopted_trials"] = sum(len(read_search(out / "tried" / n)) for n in adopted
                                    if (out / "tried" / n / "results.csv").exists())
        row["adopted_cpu_seconds"] = (sum(json.loads(b.read_text())["cpu_seconds"] for b in budgets)
                                      if all(b.exists() for b in budgets) else None)
        row["searched"] = "; ".join(filter(None, [
            f"**the row's setting** (lr {row['lr']:g}, {row['steps']} steps), from the follow-up(s) "
            f"{', '.join(adopted)}, adopted by `--adopt`: {fmt(statistics.mean(vals))} (n={len(vals)})",
            row["searched"] and f"the row's own search: {row['searched']}"]))
    # curves for rows that miss a target, sit more than 10 points from seq_icl's number either way
    # (or have none), or are within 10 points of chance (there the curve and the search are the evidence)
    off = row["mean"] is not None and (not row["reference"] or abs(row["mean"] - row["reference"]) > 10)
    near_chance = row["mean"] is not None and row["mean"] < row["chance"] + 10
    if met is False or off or near_chance:
        runs = {f"seed {s}": d for s, d in zip(seeds, seed_dirs, strict=True)}
        copied = "".join((d / "source.txt").read_text() for d in seed_dirs if (d / "source.txt").exists())
        for group in ranked:
            for t in group["trials"]:
                if str(search_dir / t["run_dir"]) not in copied and (search_dir / t["run_dir"]).exists():
                    runs[f"search {describe(group['config'])}, seed {t['_seed']}"] = search_dir / t["run_dir"]
        path = plot_curves(DOCS / f"curve_{stem}.png", stem, runs, row["reference"], row["chance"])
        row["curve"] = path.name
    return row


def fmt(value, digits=1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def previous_rows() -> dict[str, dict]:
    """The rows of the table as the last run of this script wrote them (table.json), by row name."""
    path = DOCS / "table.json"
    return {r["row"]: r for r in json.loads(path.read_text())} if path.exists() else {}


BUDGET_MARKER = "Budget (process tree of `ponderlab tune`): "


def tried_cpu_seconds(out: Path) -> float:
    """CPU seconds of the follow-ups: OUT/tried/NAME.budget.json, and for a follow-up whose runs
    are not in OUT, the budget its docs/results/seq_icl/tried_NAME.md recorded (each counted once)."""
    seconds = {}
    for page in DOCS.glob("tried_*.md"):
        text = page.read_text()
        if BUDGET_MARKER in text:
            budget, _ = json.JSONDecoder().raw_decode(text.split(BUDGET_MARKER, 1)[1].lstrip())
            seconds[page.stem.removeprefix("tried_")] = budget["cpu_seconds"]
    for budget_file in (out / "tried").glob("*.budget.json"):
        seconds[budget_file.name.removesuffix(".budget.json")] = json.loads(budget_file.read_text())["cpu_seconds"]
    return sum(seconds.values())


def adopted_cell(row: dict) -> str:
    """The follow-ups a row's setting and seeds come from (--adopt), for the search column."""
    if not row.get("adopted_from"):
        return ""
    return (f"; setting and seeds from the follow-up(s) {', '.join(row['adopted_from'])}: "
            f"{row.get('adopted_trials', '-')}, {fmt(row.get('adopted_cpu_seconds'), 0)}")


def write_table(rows: list[dict], tried_cpu: float, missing: list[str], kept: list[str] = ()) -> None:
    DOCS.mkdir(parents=True, exist_ok=True)
    lines = [
        "<!-- generated by examples/seq_icl/reproduce.py from runs/seq_icl; do not edit -->",
        "| task | backbone | width (heads) | lr | steps | train seqs | test exact match % (mean [min, max], n) "
        "| seq_icl % | chance % | target | met | search trials, CPU s | CPU s per seed | curve |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        acc = (f"{fmt(r['mean'])} [{fmt(r['min'])}, {fmt(r['max'])}], n={len(r['seeds'])}"
               if r["seeds"] else "not run")
        width = f"{r['width']}" + (f" ({r['heads']})" if r["heads"] else "")
        met = {True: "yes", False: "**no**", None: "-"}[r["target_met"]]
        if r["target_met"] is None and r["target"] != "-":
            met = "n < 3: no claim"
        curve = f"[curve]({r['curve']})" if r.get("curve") else ""
        lines.append(
            f"| {r['task']} | {r['backbone']} | {width} | {r['lr']:g} | {r['steps']} | {r['train_size']} | {acc} | "
            f"{fmt(r['reference'])} | {fmt(r['chance'])} | {r['target']} | {met} | "
            f"{r['search_trials']}, {fmt(r['search_cpu_seconds'], 0)}{adopted_cell(r)} | {fmt(r['seed_cpu_seconds_each'], 0)} "
            f"| {curve} |"
        )
    total = sum((r["search_cpu_seconds"] or 0) + r["seed_cpu_seconds"] for r in rows)
    lines += ["", "Searched settings (validation exact match %, mean over the seeds searched; the row uses "
                  "the first):", ""]
    lines += [f"- {r['task']} {r['backbone']}: {r['searched']}" for r in rows if r["searched"]]
    if missing:
        lines += ["", "Rows with no finished search or seed (not in the table): " + ", ".join(missing) + "."]
    if kept:
        lines += ["", "Rows not regenerated by the last run (`--only` named other rows), kept as an earlier run "
                      "wrote them into table.json: " + ", ".join(kept) + "."]
    lines += ["", f"Total CPU time of the runs in this table: {total / 60:.0f} CPU-minutes "
                  "(searches: process tree of `ponderlab tune`, Ray included; seeds: `ponderlab run`; "
                  f"follow-ups in runs/seq_icl/tried/ not included: {tried_cpu / 60:.0f} CPU-minutes)."]
    (DOCS / "table.md").write_text("\n".join(lines) + "\n")
    results_md = ROOT / "docs" / "results.md"
    text = results_md.read_text()
    begin, end = "<!-- begin: seq_icl table (reproduce.py) -->\n", "<!-- end: seq_icl table -->"
    if begin in text and end in text:  # the table in docs/results.md is this file, never typed
        head, rest = text.split(begin, 1)
        results_md.write_text(head + begin + "\n".join(lines[1:]).replace("](curve_", "](results/seq_icl/curve_") + "\n" + end + rest.split(end, 1)[1])
    (DOCS / "table.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="runs/seq_icl", help="Raw run outputs (not committed).")
    parser.add_argument("--only", action="append", help="Glob on row names (spec stems); repeatable.")
    parser.add_argument("--skip-search", action="store_true", help="Use the example specs as they are.")
    parser.add_argument("--seeds", type=int, default=3, help="Seeds per row (0..N-1).")
    parser.add_argument("--table-only", action="store_true", help="Only write the table from finished runs.")
    parser.add_argument("--dry-run", action="store_true", help="Validate the searches, list what would run.")
    parser.add_argument("--parallel", type=int, default=1,
                        help="Training processes at once, searches included (default 1).")
    parser.add_argument("--nice", type=int, default=10,
                        help="Niceness added to every training process (default 10).")
    parser.add_argument("--extra", action="append", default=[],
                        help="Also run the follow-up search examples/seq_icl/tune_NAME.yaml into OUT/tried/NAME.")
    parser.add_argument("--adopt", action="append", default=[],
                        help="Follow-ups OUT/tried/NAME (one setting; repeatable, their seeds pooled) that replace "
                             "the --only row's setting and seeds if better over the seeds (see adopt()).")
    args = parser.parse_args(argv)

    global PARALLEL
    PARALLEL = args.parallel
    seqicl_tools.NICE = ["nice", "-n", str(args.nice)]
    out = Path(args.output_dir).resolve()
    specs = [p for p in HERE.glob("*.yaml") if not p.stem.startswith("tune")]
    specs.sort(key=lambda p: (row_info(p)[0], ORDER.index(row_info(p)[1]) if row_info(p)[1] in ORDER else 99))
    selected = [p for p in specs if any(fnmatch.fnmatch(p.stem, g) for g in (args.only or ["*"]))]
    if not selected:
        print(f"no row matches {args.only}", file=sys.stderr)
        return 2
    if not args.table_only:
        for spec_path in selected:
            if not args.skip_search:
                run_search(spec_path, out, args.dry_run)
                if not args.dry_run:
                    write_back(spec_path, out)
            run_seeds(spec_path, out, args.seeds, args.dry_run)
    for name in args.extra:
        run_extra(HERE / f"tune_{name}.yaml", out, args.dry_run)
    if args.dry_run:
        return 0
    if args.adopt:
        if len(selected) != 1:
            raise SystemExit("--adopt needs --only naming exactly one row")
        adopt(selected[0], out, args.adopt, args.seeds)
    # With --only, only the named rows are summarized from OUT; every other row stays as the
    # last run wrote it (table.json), so a partial copy of runs/ cannot rewrite rows it lacks.
    earlier = previous_rows() if args.only else {}
    chosen = {p.stem for p in selected}
    summaries, kept = {}, []
    for spec_path in specs:
        if spec_path.stem in chosen:
            summaries[spec_path.stem] = summarize(spec_path, out)
        else:
            summaries[spec_path.stem] = earlier.get(spec_path.stem)
            kept += [spec_path.stem] if spec_path.stem in earlier else []
    rows = [r for r in summaries.values() if r is not None]
    write_table(rows, tried_cpu_seconds(out), [stem for stem, r in summaries.items() if r is None], kept)
    # every search's own table (ponderlab tune's results.md, with its settings over seeds), also
    # the follow-ups and superseded searches kept in OUT/tried/
    for kind in ("search", "tried"):
        for table in sorted((out / kind).glob("*/results.md")):
            if kind == "search" and table.parent.name not in chosen:
                continue
            budget = out / kind / f"{table.parent.name}.budget.json"
            text = table.read_text() + settings_markdown(table.parent)
            if budget.exists():
                text += f"\nBudget (process tree of `ponderlab tune`): {budget.read_text().strip()}\n"
            (DOCS / f"{kind}_{table.parent.name}.md").write_text(text)
            if kind == "tried":  # the follow-ups' learning curves, one line per trial
                trials = {f"{describe(g['config'])}, seed {t['_seed']}": table.parent / t["run_dir"]
                          for g in settings(table.parent) for t in g["trials"]}
                task = yaml.safe_load((table.parent / "tune_spec.yaml").read_text())["task"]["name"]
                name = f"tried_{table.parent.name}"
                plot_curves(DOCS / f"curve_{name}.png", name, trials, None, CHANCE[task])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
