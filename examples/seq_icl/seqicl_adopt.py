"""`--adopt` of examples/seq_icl/reproduce.py: a follow-up's setting replaces a row's setting and
seeds when it is better over the seeds."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import seqicl_tools
import yaml
from seqicl_tools import comparable, describe, row_info, settings

from ponderlab.core.spec import dotted_items


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
    old_flat, new_flat = dotted_items(comparable({**old_run_spec, "seed": 0})), dotted_items(comparable(new_spec))
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

