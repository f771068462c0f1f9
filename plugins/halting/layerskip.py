"""`layerskip`: layer dropout and early-exit loss (Elhoushi et al. 2024, arXiv 2404.16710).

Depth scope only (distinct layers l = 0..L-1, one shared output head).

Training. Layer dropout: each sequence skips layer l (identity) with probability
p_{l,t} = S(t) D(l) p_max, D(l) = exp(l ln2 / (L-1)) - 1 (0 at the first layer, 1 at
the last), S(t) = 1 (`dropout_curriculum: constant`) or exp(t ln2 / T) - 1
(`exponential`). Early-exit loss through the shared head:
L = sum_l e~(t,l) L_CE(l), e~(t,l) = C(t,l) e(l) / sum_i C(t,i) e(i), with
e(l) = e_scale sum_{i=0}^{l} i for l < L-1 and e(L-1) = L-1 + e_scale sum_{i=0}^{L-2} i;
the curriculum C (`exit_curriculum`) is `none` (all layers), `rotational`
(C = 1 iff l mod R = t mod R) or `gradual` (C = 1 iff l > ceil(L-1 - (t/T)(L-1)));
the last layer is always on. t counts training forwards (a buffer saved in checkpoints),
T = `curriculum_steps`.

Inference: exit after the fixed layer `exit_layer` (1-based; default: the last), or, with
`confidence: softmax`, at the first layer whose softmax response p_(1) - p_(2) reaches
`threshold` (as in CALM; exited tokens frozen). Self-speculative decoding (draft with the
first E layers, verify with all): `plugins/halting/layerskip_decoding.py`.

Defaults: p_max 0.1, constant S, e_scale 1, rotational curriculum with R = 2, T 1000.
Under layer dropout the output is the state after the last layer a token ran, while
`hops` counts layers run, so the conformance kit's `halting weights` contract cannot
hold in training; `conformance_config` turns dropout off (tests/test_halting_layerskip.py
checks that the kit rejects dropout on exactly that contract).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from ponderlab.core.errors import SpecError
from ponderlab.core.halting import (
    ExitHead,
    HaltingConfig,
    HaltingStrategy,
    HopFn,
    PonderOutput,
    Scope,
    accumulation_dtype,
    fixed_hops_output,
    require_scope,
)
from ponderlab.core.hookspecs import hookimpl

from .confidence import confident_exit_loop, position_thresholds, softmax_response


class LayerSkipConfig(HaltingConfig):
    name: Literal["layerskip"] = "layerskip"
    inference_options: ClassVar[tuple[str, ...]] = ("exit_layer", "threshold")
    scope: Scope = Field("depth", description="Only depth: layers are distinct.")
    p_max: float = Field(0.1, ge=0, lt=1, description="Layer dropout rate of the last layer.")
    dropout_curriculum: Literal["constant", "exponential"] = Field(
        "constant", description="S(t): constant 1 or exp(t ln2 / T) - 1."
    )
    e_scale: float = Field(1.0, ge=0, description="Scale of the early layers' exit losses.")
    exit_curriculum: Literal["none", "rotational", "gradual"] = Field(
        "rotational", description="C(t, l): which layers' exit losses are on at step t."
    )
    rotation: int = Field(2, ge=1, description="R of the rotational curriculum.")
    curriculum_steps: int = Field(1000, ge=1, description="T: training steps of the curricula.")
    exit_layer: int | None = Field(None, ge=1, description="Fixed exit layer E at inference (1-based).")
    confidence: Literal["none", "softmax"] = Field(
        "none", description="softmax: exit at the first layer whose softmax response reaches threshold."
    )
    threshold: float = Field(0.9, gt=0, le=1, description="Softmax-response threshold.")

    @model_validator(mode="after")
    def _one_exit_rule(self):
        if self.exit_layer is not None and self.confidence != "none":
            raise ValueError("give exit_layer or confidence, not both")
        return self


def dropout_rates(n_layers: int, p_max: float, scale: float) -> list[float]:
    """p_l = S(t) D(l) p_max, D(l) = exp(l ln2 / (L-1)) - 1."""
    if n_layers == 1:
        return [0.0]
    return [scale * (math.exp(layer * math.log(2) / (n_layers - 1)) - 1) * p_max
            for layer in range(n_layers)]


def exit_loss_weights(n_layers: int, e_scale: float, enabled: list[bool]) -> list[float]:
    """e~(t, l) = C e(l) / sum_i C e(i) over the enabled layers (the last always enabled)."""
    last = n_layers - 1
    scales = [e_scale * layer * (layer + 1) / 2 for layer in range(last)] + [last + e_scale * last * (last - 1) / 2]
    if scales[last] == 0:  # one layer: its loss alone
        scales[last] = 1.0
    masked = [s if (on or layer == last) else 0.0
              for layer, (s, on) in enumerate(zip(scales, enabled, strict=True))]
    total = sum(masked)
    return [s / total for s in masked]


def curriculum(kind: str, step: int, n_layers: int, rotation: int, total_steps: int) -> list[bool]:
    """C(t, l) for l = 0..L-1."""
    if kind == "rotational":
        return [layer % rotation == step % rotation for layer in range(n_layers)]
    if kind == "gradual":
        cut = math.ceil(n_layers - 1 - min(step / total_steps, 1.0) * (n_layers - 1))
        return [layer > cut for layer in range(n_layers)]
    return [True] * n_layers


class LayerSkip(HaltingStrategy):
    """Layer dropout + early-exit loss in training; fixed or confidence-chosen exit at inference."""

    config_class = LayerSkipConfig
    supported_scopes = frozenset({"depth"})
    conformance_config = {"p_max": 0.0}  # see the module docstring

    def __init__(self, config: LayerSkipConfig, *, d_model: int, n_layers: int):
        super().__init__(config, d_model=d_model, n_layers=n_layers)
        require_scope("layerskip", config.scope, self.supported_scopes,
                      "; LayerSkip drops and exits distinct layers")
        if config.exit_layer is not None and config.exit_layer > n_layers:
            raise SpecError(f"exit_layer {config.exit_layer} exceeds the {n_layers} layer(s)",
                            path="halting.exit_layer")
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # t: training forwards

    def forward(
        self, state: Tensor, hop: HopFn, mask: Tensor | None = None, head: ExitHead | None = None
    ) -> PonderOutput:
        if self.training:
            output = self._train_forward(state, hop)
            self.step += 1
            return output
        if self.config.confidence == "softmax" and head is not None:
            thresholds = position_thresholds(self.config.threshold, state.shape[1], tau=None,
                                             decay_length=None, device=state.device)
            return confident_exit_loop(
                state, hop, n_layers=self.n_layers,
                confidence=lambda layer, new, old: softmax_response(head(new)),
                thresholds=thresholds, mask=mask,
            )
        layers = self.config.exit_layer or self.n_layers
        for n in range(layers):
            state = hop(state, n, None)
        return fixed_hops_output(state, layers)

    def _train_forward(self, state: Tensor, hop: HopFn) -> PonderOutput:
        config, t = self.config, int(self.step)
        scale = 1.0 if config.dropout_curriculum == "constant" else math.exp(
            min(t / config.curriculum_steps, 1.0) * math.log(2)) - 1
        rates = dropout_rates(self.n_layers, config.p_max, scale)
        batch, length = state.shape[:2]
        hops = torch.zeros(batch, length, dtype=accumulation_dtype(state), device=state.device)
        states = []
        for n, rate in enumerate(rates):
            kept = torch.rand(batch, device=state.device) >= rate  # (B,) sequences running layer l
            active = None if bool(kept.all()) else kept.unsqueeze(1).expand(batch, length)
            state = hop(state, n, active)  # (B, L, D); dropped sequences keep their state
            hops = hops + kept.unsqueeze(1).to(hops.dtype)
            states.append(state)
        enabled = curriculum(config.exit_curriculum, t, self.n_layers, config.rotation,
                             config.curriculum_steps)
        weights = torch.tensor(exit_loss_weights(self.n_layers, config.e_scale, enabled),
                               dtype=hops.dtype, device=state.device)
        output = fixed_hops_output(state, hops)
        output.hop_states = states
        output.hop_probs = weights.expand(batch, length, self.n_layers)  # (B, L, N)
        return output


@hookimpl
def ponderlab_register_halting(register):
    register(LayerSkip)
