"""`calm`: Confident Adaptive Language Modeling (Schuster et al. 2022, arXiv 2207.07061).

Early exit across the distinct layers (depth scope only) with one shared output head.
Inference: after layer i < N a token exits when its confidence c_i reaches lambda_t
(`confidence`: `softmax` response p_(1) - p_(2) of softmax(head(s_i)); `state`
saturation cos(s_i, s_{i-1}); `classifier`, a linear early-exit classifier
sigmoid(w_i . s_i + b_i) per layer). `decay_tau` switches on the decaying threshold
lambda_t = clip_[0,1](0.9 lambda + 0.1 exp(-tau t / N)) (N = `decay_length`, default the
sequence length). An exited token is frozen: the skipped layers see its exit state
(CALM's state copying), so later tokens still attend to it.

Training runs every layer and (`layer_loss`, default on) replaces the task loss by the
depth-weighted per-layer loss through the shared head, L = sum_i w_i L_i with
w_i = i / sum_j j. The classifier, when used, learns with
L_meta = -(1/(N-1)) sum_{i<N} [y_i log c_i + (1 - y_i) log(1 - c_i)],
y_i = 1[argmax head(s_i) = argmax head(s_N)], on detached states (the model does not
learn from L_meta), weighted by `classifier_weight`.

Defaults: confidence softmax, threshold 0.9, no decay. Without an output head (the
strategy called on its own, as in the conformance kit) `softmax` cannot be computed and
every token runs every layer.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ponderlab.core.halting import (
    ExitHead,
    HaltingConfig,
    HaltingStrategy,
    HaltingUnit,
    HopFn,
    PonderOutput,
    Scope,
    fixed_hops_output,
    require_scope,
)
from ponderlab.core.hookspecs import hookimpl

from .confidence import (
    confident_exit_loop,
    depth_weights,
    position_thresholds,
    softmax_response,
    state_saturation,
)


class CALMConfig(HaltingConfig):
    name: Literal["calm"] = "calm"
    inference_options: ClassVar[tuple[str, ...]] = ("threshold", "decay_tau", "decay_length")
    scope: Scope = Field("depth", description="Only depth: early exit across the distinct layers.")
    confidence: Literal["softmax", "state", "classifier"] = Field(
        "softmax", description="softmax response, hidden-state saturation or learned classifier."
    )
    threshold: float = Field(0.9, gt=0, le=1, description="lambda: exit once the confidence reaches it.")
    decay_tau: float | None = Field(
        None, ge=0, description="tau of the decaying threshold (None: constant lambda)."
    )
    decay_length: int | None = Field(
        None, ge=1, description="N of the decaying threshold (None: the sequence length)."
    )
    layer_loss: bool = Field(True, description="Train with the depth-weighted per-layer loss.")
    classifier_weight: float = Field(1.0, ge=0, description="Weight of the classifier's BCE loss.")


class CALM(HaltingStrategy):
    """Confidence-based early exit with a shared head; depth-weighted per-layer training loss."""

    config_class = CALMConfig
    supported_scopes = frozenset({"depth"})
    conformance_config = {"confidence": "classifier"}  # the kit gives no head: exits need it

    def __init__(self, config: CALMConfig, *, d_model: int, n_layers: int):
        super().__init__(config, d_model=d_model, n_layers=n_layers)
        require_scope("calm", config.scope, self.supported_scopes,
                      "; CALM exits across distinct layers (for a shared core use recurrent_depth)")
        units = n_layers - 1 if config.confidence == "classifier" else 0
        # c = sigmoid(0) = 0.5 at init, below the default threshold: full depth at init
        self.classifiers = nn.ModuleList(HaltingUnit(d_model, 0.0) for _ in range(units))

    def confidence(self, head: ExitHead | None):
        """confidence(layer, s_i, s_{i-1}) -> (B, L), or None when it cannot be computed."""
        kind = self.config.confidence
        if kind == "softmax":
            if head is None:
                return None
            return lambda layer, new, old: softmax_response(head(new))
        if kind == "state":
            return lambda layer, new, old: state_saturation(new, old)
        return lambda layer, new, old: self.classifiers[layer](new)

    def forward(
        self, state: Tensor, hop: HopFn, mask: Tensor | None = None, head: ExitHead | None = None
    ) -> PonderOutput:
        if self.training:
            return self._train_forward(state, hop, head)
        confidence = self.confidence(head)
        if confidence is None:
            for n in range(self.n_layers):
                state = hop(state, n, None)
            return fixed_hops_output(state, self.n_layers)
        thresholds = position_thresholds(
            self.config.threshold, state.shape[1], tau=self.config.decay_tau,
            decay_length=self.config.decay_length, device=state.device,
        )  # (L,)
        return confident_exit_loop(
            state, hop, n_layers=self.n_layers, confidence=confidence,
            thresholds=thresholds, mask=mask,
        )

    def _train_forward(self, state: Tensor, hop: HopFn, head: ExitHead | None) -> PonderOutput:
        states = []
        for n in range(self.n_layers):
            state = hop(state, n, None)  # (B, L, D)
            states.append(state)
        output = fixed_hops_output(state, self.n_layers)
        if self.config.layer_loss:
            output.hop_states = states
            output.hop_probs = depth_weights(self.n_layers, state)  # (B, L, N)
        if self.classifiers and head is not None and self.config.classifier_weight > 0:
            output.aux_loss = self.config.classifier_weight * self.classifier_loss(states, head)
        return output

    def classifier_loss(self, states: list[Tensor], head: ExitHead) -> Tensor:
        """L_meta: mean BCE of c_i against y_i = 1[argmax head(s_i) = argmax head(s_N)]."""
        with torch.no_grad():
            final = head(states[-1]).argmax(-1)  # (B, L)
            targets = [head(s).argmax(-1) == final for s in states[:-1]]  # (B, L) each
        losses = []
        for unit, state, target in zip(self.classifiers, states[:-1], targets, strict=True):
            confidence = unit(state.detach())  # (B, L)
            losses.append(F.binary_cross_entropy(confidence, target.to(confidence.dtype)))
        return torch.stack(losses).mean()


@hookimpl
def ponderlab_register_halting(register):
    register(CALM)
