"""What a weak associative-recall model has learned: guesses that ignore the query key, and how
often trained models make them.

seq_icl's README lists "Random 25.0" for associative recall, where guessing one of the 9 values
scores 11.1%, and its weak rows (S4D 32.4, LSTM 36.2, RWKV 30.0) sit far above that. A model that
cannot find the query key in its context can still use the context's statistics. This script
scores such query-blind guesses on the task's own test split (each guess picks uniformly among
its candidates, so its expected accuracy is exact, not sampled):

* `any value`: one of the 9 values;
* `a value in the context`: one of the values the context shows;
* `most frequent value`: one of the values the context shows most often;
* `last value`: the value of the last pair before `=>`.

For each finished run under the directories given (run directories, or `ponderlab tune` storage
directories; found as `ponderlab report` finds them), it reads the model's greedy answer at the
scored position and reports its accuracy, how often the answer is a value in the context and one
of its most frequent values, and its accuracy on sequences where the answer is the context's one
most frequent value against the rest.

    python examples/seq_icl/context_baselines.py          # every recipe check in runs/seq_icl/tried/
    python examples/seq_icl/context_baselines.py DIR ...  # these runs; --out PAGE.md (default below)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

import torch

from ponderlab.core.errors import PonderlabError
from ponderlab.core.evaluation import build_task_data, load_run_spec, load_trained_model
from ponderlab.core.run_records import find_run_dirs, group_by

ROOT = Path(__file__).resolve().parent.parent.parent
#: the associative-recall runs at seq_icl's recipe (reproduce.py --extra ar_<backbone>_seqicl_recipe*)
RECIPE_CHECKS = "runs/seq_icl/tried/ar_*_seqicl_recipe*"
PAGE = ROOT / "docs" / "results" / "seq_icl" / "context_baselines.md"
GUESSES = ("any value", "a value in the context", "most frequent value", "last value")


def candidates(input_ids: list[int], vocab_size: int) -> dict[str, list[int]]:
    """The tokens each query-blind guess picks from, for one input `k1 v1 ... kn vn => k`."""
    n_symbols = vocab_size - 2
    shown = Counter(input_ids[1:-2:2])  # the values: every second token up to `=> k`
    top = max(shown.values())
    return {
        "any value": list(range(n_symbols // 2, n_symbols)),
        "a value in the context": sorted(shown),
        "most frequent value": sorted(value for value, count in shown.items() if count == top),
        "last value": [input_ids[-3]],
    }


def expected_hit(choices: list[int], answer: int) -> float:
    """Expected accuracy of a uniform pick among `choices`."""
    return (answer in choices) / len(choices)


def inputs_and_answers(split) -> tuple[list[list[int]], list[int]]:
    """(input ids, answer) of every row of a seq_icl split scored at its final token."""
    inputs = [list(row) for row in split["input_ids"]]
    return inputs, [int(row[-1]) for row in split["labels"]]


def guess_accuracies(options: list[dict[str, list[int]]], answers: list[int]) -> dict[str, float]:
    """Expected accuracy of each query-blind guess over a split, from each row's `candidates`."""
    totals = dict.fromkeys(GUESSES, 0.0)
    for choices_of, answer in zip(options, answers, strict=True):
        for name, choices in choices_of.items():
            totals[name] += expected_hit(choices, answer)
    return {name: total / len(answers) for name, total in totals.items()}


def answer_profile(options: list[dict[str, list[int]]], answers: list[int], predictions: list[int]) -> dict:
    """How a model's answers relate to the context (each row's `candidates`): accuracy, share of
    answers that are a value in the context / one of its most frequent values, accuracy where the
    answer is the one mode or not."""
    in_context = frequent = 0
    by_mode = {True: [], False: []}
    for choices_of, answer, prediction in zip(options, answers, predictions, strict=True):
        in_context += prediction in choices_of["a value in the context"]
        frequent += prediction in choices_of["most frequent value"]
        by_mode[choices_of["most frequent value"] == [answer]].append(prediction == answer)
    n = len(answers)

    def share(hits: list[bool]) -> float | None:
        return sum(hits) / len(hits) if hits else None

    return {
        "accuracy": sum(p == a for p, a in zip(predictions, answers, strict=True)) / n,
        "answers a value in the context": in_context / n,
        "answers a most frequent value": frequent / n,
        "accuracy where the answer is the one mode": share(by_mode[True]),
        "accuracy elsewhere": share(by_mode[False]),
        "sequences where the answer is the one mode": len(by_mode[True]) / n,
    }


@torch.no_grad()
def final_predictions(model, inputs: list[list[int]], batch_size: int = 100) -> list[int]:
    """The greedy token at the last position of each input (all inputs have one length)."""
    predictions = []
    for start in range(0, len(inputs), batch_size):
        batch = torch.tensor(inputs[start : start + batch_size])  # (B, L)
        logits = model(batch).logits  # (B, L, V)
        predictions += logits[:, -1].argmax(-1).tolist()
    return predictions


def finished_runs(paths: list[Path]) -> list[Path]:
    """The finished runs under `paths` (run or tune storage directories); unfinished ones are
    passed over with a notice."""
    finished, unfinished = find_run_dirs(paths)
    for run in unfinished:
        print(f"{run}: not finished, passed over", file=sys.stderr)
    if not finished:
        raise PonderlabError(f"no finished run (spec.yaml and results.json) under {', '.join(map(str, paths))}")
    return finished


def profile_run(run_dir: Path) -> tuple[str, str, int, dict, dict]:
    """(experiment name, run directory name, seed, query-blind guess accuracies, the model's answer
    profile) of one run."""
    spec = load_run_spec(run_dir)
    if spec.task.name != "associative_recall":
        raise PonderlabError(f"{run_dir}: task {spec.task.name!r}, this script reads associative_recall runs")
    task, data = build_task_data(spec)
    inputs, answers = inputs_and_answers(data.split("test"))
    options = [candidates(ids, task.vocab_size) for ids in inputs]
    model, _, _ = load_trained_model(run_dir, spec, task.vocab_size, torch.device("cpu"))
    predictions = final_predictions(model, inputs)
    return (spec.name, run_dir.name, spec.seed, guess_accuracies(options, answers),
            answer_profile(options, answers, predictions))


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def report(profiles: list[tuple[str, str, int, dict, dict]], sources: list[str]) -> str:
    """Markdown: the guesses on each distinct test split, then each experiment's runs and mean."""
    lines = ["# Associative recall: query-blind guesses and trained models' answers", "",
             "Written by `" + " ".join(["python examples/seq_icl/context_baselines.py", *sources]) + "`",
             "(its docstring says what each column is; finished runs only).", "",
             "## Query-blind guesses on the test split (expected accuracy %)", "",
             "| test split (seed) | " + " | ".join(GUESSES) + " |", "|---|" + "---|" * len(GUESSES)]
    splits = {}
    for _, _, seed, guesses, _ in profiles:
        splits.setdefault(seed, guesses)
    lines += [f"| {seed} | " + " | ".join(percent(g[name]) for name in GUESSES) + " |" for seed, g in sorted(splits.items())]
    keys = list(profiles[0][4]) if profiles else []
    lines += ["", "## Trained models' answers (%)", "", "| experiment | run | seed | " + " | ".join(keys) + " |",
              "|---|---|---|" + "---|" * len(keys)]
    for name, run, seed, _, profile in profiles:
        lines.append(f"| {name} | {run} | {seed} | " + " | ".join(percent(profile[k]) for k in keys) + " |")
    lines += ["", "## Mean over seeds (%)", "", "| experiment | n | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for name, group in group_by(profiles, key=lambda profile: profile[0]).items():
        runs = [profile for *_, profile in group]
        known = [[r[k] for r in runs if r[k] is not None] for k in keys]
        means = [statistics.mean(values) if values else None for values in known]
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(percent(m) for m in means) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="*", type=Path,
                        help=f"run directories or tune storage directories (default: {RECIPE_CHECKS})")
    parser.add_argument("--out", type=Path, default=PAGE, help="the markdown page; the numbers go beside it as .json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    dirs = args.dirs or sorted(p for p in ROOT.glob(RECIPE_CHECKS) if p.is_dir())  # not their .budget.json
    try:
        if not dirs:
            raise PonderlabError(f"no run directories given and none match {ROOT / RECIPE_CHECKS}")
        profiles = [profile_run(run_dir) for run_dir in finished_runs(dirs)]
    except PonderlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = report(profiles, [str(d) for d in args.dirs])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    rows = [{"experiment": n, "run": r, "seed": s, "guesses": g, "answers": p} for n, r, s, g, p in profiles]
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
