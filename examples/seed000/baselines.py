"""Reference points for the CA tasks of grid.yaml, computed on the same test split the runs use.

    python examples/seed000/baselines.py [--out docs/results/seed000/baselines.md]

  copy last state   predict s_{c-1+k} = s_{c-1} (the last context state)
  rule from context read the rule table off the c-1 context transitions, apply it
                    k times to s_{c-1}; neighbourhoods never seen count as wrong
                    guesses of 0 (this is what a model that infers the rule could reach)

Binary tasks need no script: chance token accuracy is 0.5 and exact match 2^-(target bits):
2^-n for copy and reverse, 2^-(n+1) for addition, averaged over its n ~ U[5, 8].
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent


def ca_baselines(task_options: dict, seed: int) -> dict[str, float]:
    """Bit accuracy and exact match of the two reference predictors on the test split."""
    from ponderlab.core.api import build_task
    from ponderlab.plugins.tasks.ca1d import neighbourhood_index

    task = build_task(**task_options)
    cfg = task.config
    test = task.build(seed).test
    scores = {"copy": [], "rule": []}
    for row in test:
        ids = row["input_ids"]
        width, context = cfg.width, cfg.context_states
        states = np.array([ids[i * (width + 1) + 1 : (i + 1) * (width + 1)] for i in range(context)])
        target = np.array(ids[context * (width + 1) + 1 :])
        shift = row["shift"]
        table = np.full(2 ** (2 * cfg.radius + 1), -1)
        for before, after in zip(states[:-1], states[1:], strict=True):
            table[neighbourhood_index(before, cfg.radius)] = after
        guess = states[-1]
        for _ in range(shift):
            looked_up = table[neighbourhood_index(np.maximum(guess, 0), cfg.radius)]
            guess = np.where(looked_up < 0, 0, looked_up)
        scores["copy"].append(states[-1] == target)
        scores["rule"].append(guess == target)
    out = {}
    for name, rows in scores.items():
        matrix = np.array(rows)
        out[f"{name}/token_accuracy"] = float(matrix.mean())
        out[f"{name}/exact_match"] = float(matrix.all(axis=1).mean())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default=str(HERE / "grid.yaml"))
    parser.add_argument("--out", default="docs/results/seed000/baselines.md")
    args = parser.parse_args()
    grid = yaml.safe_load(Path(args.grid).read_text())
    # Each run's data (and test split) is drawn from its own seed, so the references are
    # computed on the test split of every seed of the grid and averaged.
    seeds = list(grid.get("seeds") or [grid["base"].get("seed", 0)])
    lines = [
        f"Mean over the test splits of seeds {', '.join(map(str, seeds))} (each run's data comes from its seed); "
        "per seed in brackets.",
        "",
        "| task | predictor | test token accuracy | test exact match |",
        "|---|---|---:|---:|",
    ]
    for key, options in grid["tasks"].items():
        if options["name"] != "ca1d":
            continue
        results = [ca_baselines(options, seed) for seed in seeds]
        for name, label in (("copy", "copy last state"), ("rule", "rule from context")):
            cells = []
            for metric in ("token_accuracy", "exact_match"):
                values = [r[f"{name}/{metric}"] for r in results]
                cells.append(f"{np.mean(values):.3f} [{' '.join(f'{v:.3f}' for v in values)}]")
            lines.append(f"| {key} | {label} | {cells[0]} | {cells[1]} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
