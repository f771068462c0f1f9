"""Metrics on scored positions only, plus halting statistics over real tokens."""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import Tensor

from .interfaces import IGNORE_INDEX, HaltingStats


class MetricAccumulator:
    """Accumulates loss, token accuracy, exact match and halting stats over batches.

    Token accuracy and loss count scored positions (labels != -100). Exact match
    is per sequence: every scored position right. Hop statistics count real
    (unpadded) tokens. Slice columns split exact match and token accuracy.
    """

    def __init__(self, slice_columns: tuple[str, ...] = ()):
        self.slice_columns = slice_columns
        self.loss_sum = 0.0
        self.scored = 0
        self.correct = 0
        self.sequences = 0
        self.exact = 0
        self.tokens = 0
        self.hops_sum = 0.0
        self.hops_max = 0.0
        self.layers_sum = 0.0
        self.ponder_sum = 0.0
        self.remainder_sum = 0.0
        self.position_hops = torch.zeros(0)  # (L,) sum of hops per position, L the longest batch
        self.position_count = torch.zeros(0)  # (L,) real tokens per position
        self.hop_histogram: dict[int, int] = defaultdict(int)
        self.slices: dict[str, dict[int, list[int]]] = {
            c: defaultdict(lambda: [0, 0, 0, 0]) for c in slice_columns
        }  # value -> [sequences, exact, scored, correct]

    @torch.no_grad()
    def update(self, logits: Tensor, labels: Tensor, stats: HaltingStats, mask: Tensor, batch: dict) -> None:
        scored = labels != IGNORE_INDEX  # (B, L)
        loss = F.cross_entropy(
            logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        predictions = logits.argmax(-1)  # (B, L)
        right = (predictions == labels) & scored
        per_seq_scored = scored.sum(1)
        per_seq_right = right.sum(1)
        exact = (per_seq_right == per_seq_scored) & (per_seq_scored > 0)
        self.loss_sum += float(loss)
        self.scored += int(scored.sum())
        self.correct += int(right.sum())
        self.sequences += int((per_seq_scored > 0).sum())
        self.exact += int(exact.sum())

        real = mask.bool()
        hops = stats.hops.float()
        self.tokens += int(real.sum())
        self.hops_sum += float(hops[real].sum())
        if real.any():
            self.hops_max = max(self.hops_max, float(hops[real].max()))
        self.layers_sum += float(stats.layers.float()[real].sum())
        self.ponder_sum += float(stats.ponder_cost.float()[real].sum())
        self.remainder_sum += float(stats.remainder.float()[real].sum())
        masked = torch.where(real, hops, torch.zeros_like(hops))
        length = hops.shape[1]
        grow = max(0, length - len(self.position_hops))
        self.position_hops = F.pad(self.position_hops, (0, grow))
        self.position_count = F.pad(self.position_count, (0, grow))
        self.position_hops[:length] += masked.sum(0).cpu()
        self.position_count[:length] += real.sum(0).float().cpu()
        for value, count in zip(*torch.unique(torch.round(hops[real]).long(), return_counts=True), strict=True):
            self.hop_histogram[int(value)] += int(count)

        for column in self.slice_columns:
            if column not in batch:
                continue
            for b, value in enumerate(batch[column].tolist()):
                entry = self.slices[column][int(value)]
                entry[0] += int(per_seq_scored[b] > 0)
                entry[1] += int(exact[b])
                entry[2] += int(per_seq_scored[b])
                entry[3] += int(per_seq_right[b])

    def compute(self) -> dict[str, float]:
        def ratio(a: float, b: float) -> float:
            return a / b if b else float("nan")

        out = {
            "loss": ratio(self.loss_sum, self.scored),
            "token_accuracy": ratio(self.correct, self.scored),
            "exact_match": ratio(self.exact, self.sequences),
            "mean_hops": ratio(self.hops_sum, self.tokens),
            "max_hops": self.hops_max,
            "mean_layers": ratio(self.layers_sum, self.tokens),
            "ponder_cost": ratio(self.ponder_sum, self.tokens),
            "remainder": ratio(self.remainder_sum, self.tokens),
            "examples": float(self.sequences),
        }
        for column, values in self.slices.items():
            for value, (seqs, exact, scored, right) in sorted(values.items()):
                out[f"{column}={value}/exact_match"] = ratio(exact, seqs)
                out[f"{column}={value}/token_accuracy"] = ratio(right, scored)
        return out

    def halting_profile(self) -> dict:
        """Per-position mean hops and the hop histogram (for halting.json and plots)."""
        means = (self.position_hops / self.position_count.clamp_min(1)).tolist()
        return {
            "position_mean_hops": [round(m, 6) for m in means],
            "hop_histogram": {str(k): v for k, v in sorted(self.hop_histogram.items())},
        }
