"""Mean and spread over seeds of the study's report table (runs.csv of `ponderlab report`).

    python examples/adaptive_study/summarize.py runs/adaptive_study/report/runs.csv
"""

from __future__ import annotations

import collections
import csv
import statistics
import sys


def main(path: str) -> None:
    groups: dict[tuple[str, str, str], list[dict]] = collections.defaultdict(list)
    for row in csv.DictReader(open(path)):
        groups[(row["task"], row["halting"], row["scope"])].append(row)
    print("| task | halting | scope | seeds | test token acc (mean ± sd) | test exact match (mean) "
          "| mean hops = layer applications (mean) |")
    print("|---|---|---|---:|---:|---:|---:|")
    for (task, halting, scope), rows in sorted(groups.items()):
        accuracy = [float(r["test token acc"]) for r in rows]
        exact = [float(r["test exact match"]) for r in rows]
        hops = [float(r["mean hops"]) for r in rows]
        spread = statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0
        print(f"| {task} | {halting} | {scope} | {len(rows)} | {statistics.mean(accuracy):.3f} ± "
              f"{spread:.3f} | {statistics.mean(exact):.3f} | {statistics.mean(hops):.2f} |")


if __name__ == "__main__":
    main(sys.argv[1])
