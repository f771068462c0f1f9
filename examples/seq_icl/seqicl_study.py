"""What examples/seq_icl/reproduce.py compares and searches: seq_icl's published numbers,
chance, issue 30's targets, the CPU-scale search of each task and backbone, and the row order."""

from __future__ import annotations

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
SEARCH = {
    # seq_icl's width 32 and one budget for every row, as seq_icl gives every model the same epochs:
    # 6000 steps (38 epochs; H3's, the longest a strong row needed at width 64), warmup 5%, the lr
    # searched over seeds 0-2. The width-32 checks of the width-64 rows (session of 2026-12-05,
    # 08:50; docs/results.md) showed that the strong rows need no more width: the transformer
    # recalled in 6 of 6 seeds at 4000 steps, H3 in 3 of 3 at lr 2e-3. The rows searched at
    # width 64 are kept in width64/ with their plan, SEARCH_WIDTH_64. Result: the transformer and H3
    # at 100.0 and 97.7% (every seed over 96), the LSTM, S4D and LRU at 27-31%, RWKV at 55.3%.
    "associative_recall": {
        "set": {"backbone.d_model": 32, "training.steps": 6000, "training.warmup_steps": 300,
                "training.eval_every": 500, "training.batch_size": 32, "training.weight_decay": 0.1},
        "search": {"training.lr": {"grid": [1.0e-3, 3.0e-3]}, "seed": {"grid": [0, 1, 2]}},
        "by_backbone": {
            # 4 heads (a tie with 1 and 2 at width 64); FFN 4x the width as seq_icl's d_inner.
            "transformer": {"set": {"backbone.n_heads": 4, "backbone.ffn_size": 128},
                            "search": {"training.lr": {"grid": [2.0e-3, 3.0e-3]}, "seed": {"grid": [0, 1, 2]}}},
            "h3": {"search": {"training.lr": {"grid": [1.0e-3, 2.0e-3]}, "seed": {"grid": [0, 1, 2]}}}},
    },
    "induction_head": {
        # issue 30: width 64, 4 heads, lr 5e-4, 100k training sequences: chance until ~10k steps,
        # 100% by 16k (about 6 CPU-min on an idle core). Each trial costs about that. Width 64 stays:
        # at width 32 the transformer row recalls in 1 seed of 3 (tune_ih_transformer_d32.yaml).
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
#: Row order: the rows with targets first.
ORDER = ["transformer", "h3", "lstm", "s4d", "lru", "rwkv", "gilr", "retnet"]

#: The associative-recall plan of the rows searched at width 64 (examples/seq_icl/width64/), kept as
#: the record their follow-ups (tune_ar_*.yaml) were defined against. Width 64 (seq_icl: 32) made the
#: transformer learn associative recall within a few thousand steps (issue 30).
SEARCH_WIDTH_64 = {
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
            # 96.4, 93.2%, docs/results/seq_icl/superseded_search_associative_recall_h3_head_dim1_lr1e-3.md);
            # lr 2e-3 over the same seeds
            # (the follow-up tune_ar_h3_lr2e-3_steps6000.yaml: 98.2, 97.4, 97.2%) replaced it by
            # `--adopt`; heads of size 2 were then adopted (tune_ar_h3_heads.yaml). This grid, run as
            # one search on the row at head_dim 2 (session of 2026-12-04 afternoon), chose 1e-3
            # (validation 99.8, 99.6, 99.8% against 97.2, 97.8, 99.4%): the committed row.
            "h3": {"set": {"training.steps": 6000, "training.warmup_steps": 300},
                   "search": {"training.lr": {"grid": [1.0e-3, 2.0e-3]}, "seed": {"grid": [0, 1, 2]}}}},
    },
}
