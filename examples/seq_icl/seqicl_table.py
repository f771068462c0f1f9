"""The table of examples/seq_icl/reproduce.py: each row over its seeds beside seq_icl's number,
learning curves where a row needs them, and every search's own page (docs/results/seq_icl/)."""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

import seqicl_tools
import yaml
from seqicl_study import CHANCE, REFERENCE, TARGET_MAX, TARGET_MIN
from seqicl_tools import describe, plot_curves, read_search, row_info, settings, settings_markdown

ROOT = Path(__file__).resolve().parent.parent.parent
DOCS = ROOT / "docs" / "results" / "seq_icl"


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
        "recipe": recipe_checks(out, task, backbone),
    }
    low, high = TARGET_MIN.get((task, backbone)), TARGET_MAX.get((task, backbone))
    row["target"] = f">= {low:.0f}" if low else (f"< {high:.0f}" if high else "-")
    met = meets_target(task, backbone, accs)
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
            row["searched"] and OWN_SEARCH + row["searched"]]))
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


OWN_SEARCH = "the row's own search: "
TASK_PREFIX = {"associative_recall": "ar", "induction_head": "ih"}
#: The follow-ups that train a row with seq_icl's own recipe (width 32, lr 5e-4, 400 epochs, 10%
#: warmup): OUT/tried/<ar|ih>_<backbone>_seqicl_recipe<suffix> -> (how the table names it, whether
#: the row's target is judged on it). The first keeps ponderlab's clipping, schedule and decay of
#: matrices only; the LRU scan-gradient checks reproduce a bug of seq_icl's kernel, so they are not
#: judged; the lm_simple check is seq_icl's published LSTM model (the `lstm_mixer` backbone).
FULL = "no clipping, linear decay to 0 and every parameter decayed"
RECIPE_CHECKS = {"": ("", True), "_kernel_gradient": ("with seq_icl's LRU scan gradient ", False),
                 "_kernel_gradient_full": (f"with seq_icl's LRU scan gradient, {FULL} ", False),
                 "_full": (f"with {FULL} ", True),
                 "_full_tied": (f"with {FULL}, head tied to the embeddings ", True),
                 "_lm_simple": (f"with seq_icl's lm_simple LSTM blocks, tied head, {FULL} ", True)}


def recipe_checks(out: Path, task: str, backbone: str) -> list[dict]:
    """The row trained with seq_icl's own recipe (the RECIPE_CHECKS follow-ups in OUT/tried/): each
    follow-up's name, label and test exact match % of its completed trials."""
    checks = []
    for suffix, (label, judged) in RECIPE_CHECKS.items():
        name = f"{TASK_PREFIX[task]}_{backbone}_seqicl_recipe{suffix}"
        if (out / "tried" / name / "results.csv").exists():
            values = [100 * float(r["test/exact_match"]) for r in read_search(out / "tried" / name)
                      if r.get("status") == "completed"]
            if values:
                checks.append({"name": name, "label": label, "judged": judged, "test_exact_match": values})
    return checks


def merged_recipe(found: list[dict], recorded: list[dict]) -> list[dict]:
    """The recipe follow-ups OUT holds, plus those table.json recorded that OUT lacks (a copy of
    runs/ without a check's runs keeps its numbers), in RECIPE_CHECKS order."""
    by_name = {check["name"]: check for check in recorded}
    by_name.update((check["name"], check) for check in found)
    order = {suffix: i for i, suffix in enumerate(RECIPE_CHECKS)}
    return sorted(by_name.values(), key=lambda c: order.get(c["name"].partition("_seqicl_recipe")[2], len(order)))


def with_recipe(row: dict, out: Path) -> dict:
    """A row kept from table.json, with its recipe follow-ups as OUT holds them and as it recorded them."""
    checks = merged_recipe(recipe_checks(out, row["task"], row["backbone"]), row.get("recipe") or [])
    return {**row, "recipe": checks} if checks else row


def meets_target(task: str, backbone: str, values: list[float]) -> bool | None:
    """Whether the mean of `values` (%) meets the row's target; None without a target or values."""
    low, high = TARGET_MIN.get((task, backbone)), TARGET_MAX.get((task, backbone))
    if not values or not (low or high):
        return None
    mean = statistics.mean(values)
    return mean >= low if low else mean < high


def recipe_verdicts(row: dict) -> str:
    """For the met column: "; at seq_icl's recipe[ label]: yes/no" per judged recipe follow-up of
    3+ seeds on a row with a target, or ""."""
    verdicts = []
    for check in row.get("recipe") or []:
        met = meets_target(row["task"], row["backbone"], check["test_exact_match"])
        if check.get("judged") and len(check["test_exact_match"]) >= 3 and met is not None:
            verdicts.append(f"; at seq_icl's recipe {check['label']}".rstrip() + f": {'yes' if met else '**no**'}")
    return "".join(verdicts)


def recipe_cell(row: dict) -> str:
    """The row at seq_icl's recipe: mean [min, max], n of each recipe follow-up, or "-"."""
    cells = [f"{check['label']}{fmt(statistics.mean(v))} [{fmt(min(v))}, {fmt(max(v))}], n={len(v)}"
             for check in row.get("recipe") or [] for v in [check["test_exact_match"]]]
    return "; ".join(cells) or "-"


def carry_search(row: dict, earlier: dict) -> dict:
    """`row`, summarized from a copy of runs/ that lacks its search (or its recipe follow-ups), with
    those as the earlier table.json recorded them (trials, CPU time, settings over seeds), so that
    regenerating the row's seeds does not drop the search behind it."""
    if earlier.get("recipe"):
        row = {**row, "recipe": merged_recipe(row.get("recipe") or [], earlier["recipe"])}
    if row["search_trials"] or not earlier.get("search_trials"):
        return row
    searched = earlier.get("searched") or ""
    if earlier.get("adopted_from"):  # only the part that was the row's own search
        searched = searched.split(OWN_SEARCH, 1)[1] if OWN_SEARCH in searched else ""
    carried = {k: earlier[k] for k in ("search_trials", "search_cpu_seconds", "search_trial_seconds", "search")}
    if row.get("adopted_from"):
        searched = "; ".join(filter(None, [row["searched"], searched and OWN_SEARCH + searched]))
    return {**row, **carried, "searched": searched}


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
        "| seq_icl % | chance % | target | met | at seq_icl's recipe % | search trials, CPU s | CPU s per seed | curve |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        acc = (f"{fmt(r['mean'])} [{fmt(r['min'])}, {fmt(r['max'])}], n={len(r['seeds'])}"
               if r["seeds"] else "not run")
        width = f"{r['width']}" + (f" ({r['heads']})" if r["heads"] else "")
        met = {True: "yes", False: "**no**", None: "-"}[r["target_met"]]
        if r["target_met"] is None and r["target"] != "-":
            met = "n < 3: no claim"
        met += recipe_verdicts(r)
        curve = f"[curve]({r['curve']})" if r.get("curve") else ""
        lines.append(
            f"| {r['task']} | {r['backbone']} | {width} | {r['lr']:g} | {r['steps']} | {r['train_size']} | {acc} | "
            f"{fmt(r['reference'])} | {fmt(r['chance'])} | {r['target']} | {met} | {recipe_cell(r)} | "
            f"{r['search_trials']}, {fmt(r['search_cpu_seconds'], 0)}{adopted_cell(r)} | {fmt(r['seed_cpu_seconds_each'], 0)} "
            f"| {curve} |"
        )
    total = sum((r["search_cpu_seconds"] or 0) + r["seed_cpu_seconds"] for r in rows)
    lines += ["", "At seq_icl's recipe: the row at seq_icl's width 32, lr 5e-4, 62800 steps (400 epochs) with 10% "
                  "warmup and weight decay 0.1 (runs/seq_icl/tried/*_seqicl_recipe*; the transformer also at "
                  "seq_icl's 1 head, FFN 128 and sequential residual, H3 at its heads of size 1), test exact match % over its "
                  "seeds; with ponderlab's gradient clipping at 1.0, cosine decay to 0.1x and weight decay on "
                  "matrices only unless the cell says otherwise (seq_icl: none, linear to 0, every parameter); "
                  "- where not run.", ""]
    lines += ["Searched settings (validation exact match %, mean over the seeds searched; the row uses "
              "the first):", ""]
    lines += [f"- {r['task']} {r['backbone']}: {r['searched']}" for r in rows if r["searched"]]
    if missing:
        lines += ["", "Rows with no finished search or seed (not in the table): " + ", ".join(missing) + "."]
    if kept:
        lines += ["", "Rows not regenerated by the last run (not named by `--only`, or named with no runs in "
                      "its output folder), kept as an earlier run wrote them into table.json: " + ", ".join(kept) + "."]
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


def write_search_pages(out: Path, chosen: set[str]) -> None:
    """Every search's own table (ponderlab tune's results.md, with its settings over seeds) for the
    `chosen` rows, and the follow-ups and superseded searches kept in OUT/tried/ with their curves."""
    for kind in ("search", "tried"):
        for table in sorted((out / kind).glob("*/results.md")):
            if kind == "search" and table.parent.name not in chosen:
                continue
            budget = out / kind / f"{table.parent.name}.budget.json"
            text = table.read_text() + settings_markdown(table.parent)
            if budget.exists():
                text += f"\n{BUDGET_MARKER}{budget.read_text().strip()}\n"
            (DOCS / f"{kind}_{table.parent.name}.md").write_text(text)
            if kind == "tried":  # the follow-ups' learning curves, one line per trial
                trials = {f"{describe(g['config'])}, seed {t['_seed']}": table.parent / t["run_dir"]
                          for g in settings(table.parent) for t in g["trials"]}
                task = yaml.safe_load((table.parent / "tune_spec.yaml").read_text())["task"]["name"]
                name = f"tried_{table.parent.name}"
                plot_curves(DOCS / f"curve_{name}.png", name, trials, None, CHANCE[task])
