"""LayerSkip self-speculative greedy decoding (Elhoushi et al. 2024, section 4).

A round, for a sequence x of n tokens and d draft tokens:

1. draft: y_i = argmax head(h_E(x y_1 .. y_{i-1}))[last] for i = 1..d, with the first E
   layers and the shared output head (the model's final norm, then its projection);
2. verify: one forward of the full model over x y_1 .. y_d gives its greedy token z_i
   after x y_<i for i = 1..d+1;
3. accept the longest prefix with y_i = z_i (k tokens), then append z_{k+1}.

Each round appends k + 1 tokens, every one the full model's greedy choice, so the output
is exactly the full model's greedy output (`greedy_decode`). Near the end d shrinks so
that no more than `max_new_tokens` are made.

ponderlab has no KV cache: every forward here recomputes the whole prefix, and the
paper's reuse of the draft's cache in verification is not done. The costs are counted
as a cached implementation would spend them:

* layer passes: sequential layer applications, each over the new tokens of one forward
  (a draft step is E, a verification N); full greedy decoding costs N per token. In the
  memory-bound regime of decoding this is what sets the time.
* token layers: layer applications summed over the new tokens (draft: E per draft step;
  verification without cache reuse: N per verified token, d + 1 of them).

Decoding runs each sequence on its own (batch 1, as in the paper), on any depth-scope
`PonderModel` without segment recurrence (the first E layers applied densely, as
`layerskip` with `exit_layer: E` does at inference).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ponderlab.core.interfaces import BlockContext
from ponderlab.core.model import PonderModel


@dataclass
class DecodingStats:
    """Counts of one decoding call (summed over its sequences)."""

    generated: int = 0  # new tokens
    drafted: int = 0  # draft tokens proposed
    accepted: int = 0  # draft tokens the full model agreed with
    rounds: int = 0  # draft-verify rounds (greedy decoding: one per token)
    layer_passes: int = 0  # sequential layer applications (see the module docstring)
    token_layers: int = 0  # layer applications summed over new tokens

    @property
    def acceptance_rate(self) -> float:
        """accepted / drafted (1.0 when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else 1.0

    @property
    def layer_passes_per_token(self) -> float:
        return self.layer_passes / max(1, self.generated)

    @property
    def token_layers_per_token(self) -> float:
        return self.token_layers / max(1, self.generated)


def require_decodable(model: PonderModel, exit_layer: int) -> None:
    """ValueError unless `model` is a depth-scope model without segments, in eval mode
    (dropout would make the two passes disagree), and 1 <= E <= N."""
    if model.training:
        raise ValueError("decode with the model in eval mode (model.eval())")
    if model.scope != "depth" or model.backbone.uses_segments:
        raise ValueError("self-speculative decoding needs depth scope (distinct layers) and no segment memory")
    if not 1 <= exit_layer <= model.n_layers:
        raise ValueError(f"exit_layer {exit_layer} must be between 1 and the {model.n_layers} layers")


def layer_logits(model: PonderModel, ids: Tensor, layers: int) -> Tensor:
    """ids (B, T) -> logits (B, T, V) of the shared head after the first `layers` layers."""
    hidden = model.backbone.embed(ids)  # (B, T, D)
    for index in range(layers):
        hidden = model.backbone.blocks[index](hidden, BlockContext(layer=index))
    return model.head(model.backbone.finalize(hidden))


@torch.no_grad()
def greedy_decode(model: PonderModel, prompt: Tensor, max_new_tokens: int) -> tuple[Tensor, DecodingStats]:
    """The full model's greedy continuation: prompt (B, P) -> (B, P + max_new_tokens)."""
    require_decodable(model, model.n_layers)
    n_layers, tokens = model.n_layers, prompt
    for _ in range(max_new_tokens):
        following = layer_logits(model, tokens, n_layers)[:, -1].argmax(-1)  # (B,)
        tokens = torch.cat([tokens, following.unsqueeze(1)], dim=1)
    new = max_new_tokens * prompt.shape[0]
    stats = DecodingStats(generated=new, rounds=new, layer_passes=new * n_layers, token_layers=new * n_layers)
    return tokens, stats


@torch.no_grad()
def self_speculative_decode(
    model: PonderModel, prompt: Tensor, max_new_tokens: int, *, exit_layer: int, draft_tokens: int
) -> tuple[Tensor, DecodingStats]:
    """LayerSkip's draft (first E = `exit_layer` layers) and verify (all layers) rounds:
    prompt (B, P) -> (B, P + max_new_tokens), equal to `greedy_decode`, and the counts."""
    require_decodable(model, exit_layer)
    if draft_tokens < 1:
        raise ValueError(f"draft_tokens must be at least 1, got {draft_tokens}")
    stats = DecodingStats()
    rows = [decode_row(model, row.unsqueeze(0), max_new_tokens, exit_layer, draft_tokens, stats)
            for row in prompt]
    return torch.cat(rows), stats


def decode_row(
    model: PonderModel, tokens: Tensor, max_new_tokens: int, exit_layer: int, draft_tokens: int,
    stats: DecodingStats,
) -> Tensor:
    """One sequence (1, P) -> (1, P + max_new_tokens); adds its counts to `stats`."""
    n_layers, target = model.n_layers, tokens.shape[1] + max_new_tokens
    while tokens.shape[1] < target:
        drafts = min(draft_tokens, target - tokens.shape[1] - 1)  # d: at most the tokens left
        start = tokens.shape[1]
        for _ in range(drafts):  # draft y_1 .. y_d with the first E layers
            guess = layer_logits(model, tokens, exit_layer)[:, -1].argmax(-1, keepdim=True)  # (1, 1)
            tokens = torch.cat([tokens, guess], dim=1)
        verified = layer_logits(model, tokens, n_layers)[0, start - 1:].argmax(-1)  # (d + 1,) z_1 .. z_{d+1}
        agree = (verified[:drafts] == tokens[0, start:]).long()  # (d,)
        accepted = int(agree.cumprod(0).sum())  # k: the longest agreeing prefix
        tokens = torch.cat([tokens[:, :start + accepted], verified[accepted].view(1, 1)], dim=1)
        stats.generated += accepted + 1
        stats.drafted += drafts
        stats.accepted += accepted
        stats.rounds += 1
        stats.layer_passes += drafts * exit_layer + n_layers
        stats.token_layers += drafts * exit_layer + (drafts + 1) * n_layers
    return tokens
