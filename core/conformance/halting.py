"""The halting contracts: scopes, hop protocol, halting weights and stats, packed depth."""

from __future__ import annotations

import contextlib
import math
from functools import cached_property

import torch
from pydantic import ValidationError
from torch import Tensor

from ..config import HaltingConfig
from ..errors import SpecError
from ..interfaces import HaltingStrategy, PonderOutput
from ..run import seed_everything
from .base import _expect_finite, _expect_shape, _fail, _max_abs, _perturb, _Problem, _token_ids


class HaltingChecks:
    """Contracts of halting strategies (mixed into `Conformance`)."""

    def _config_for_scope(self, scope: str) -> HaltingConfig:
        """The config under test moved to `scope` (options only valid elsewhere are dropped)."""
        config = self.config
        if scope == config.scope:
            return config
        config_class = type(config)
        with contextlib.suppress(ValidationError):  # else the defaults in that scope
            return config_class.model_validate({**config.model_dump(exclude_unset=True), "scope": scope})
        try:
            return config_class.model_validate({"scope": scope})
        except ValidationError as exc:
            _fail(f"supported_scopes lists {scope!r}, but no default config is valid there: {exc}")

    def _layers_for(self, scope: str) -> int:
        """3 layers, or 1 where the strategy rejects several layers in this scope (with a SpecError)."""
        if scope not in self._layers:
            try:
                self.plugin(self._config_for_scope(scope), d_model=8, n_layers=3)
                self._layers[scope] = 3
            except SpecError:
                self._layers[scope] = 1
        return self._layers[scope]

    def _strategy(self, scope: str, d_model: int) -> HaltingStrategy:
        config = self._config_for_scope(scope)
        return self.plugin(config, d_model=d_model, n_layers=self._layers_for(scope))

    def _check_scopes(self) -> None:
        scopes = set(getattr(self.plugin, "supported_scopes", ()))
        if not scopes or not scopes <= {"layer", "model", "depth"}:
            _fail(f"supported_scopes must be a non-empty subset of layer/model/depth (got {sorted(scopes)})")
        if self.config.scope not in scopes:
            _fail(f"the config's scope {self.config.scope!r} is not in supported_scopes {sorted(scopes)}")
        for scope in sorted(scopes):
            layers = self._layers_for(scope)
            strategy = self._strategy(scope, d_model=8)
            hops = strategy.max_hops()
            if not isinstance(hops, int) or hops < 1:
                _fail(f"max_hops() is {hops!r} in {scope} scope (a positive int is needed)")
            if scope == "depth" and hops > layers:
                _fail(f"max_hops() is {hops} in depth scope with {layers} layers (hop n runs layer n: at most n_layers)")
            weight = strategy.loss_weight()
            if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
                _fail(f"loss_weight() is {weight!r} (a finite number >= 0 is needed)")

    @cached_property
    def _synthetic(self) -> list[tuple[str, Tensor, PonderOutput, _HopLog]]:
        """Run the strategy with marker hops: hop n returns e_n (one-hot) for active tokens.

        The input state is e_N (N = max_hops) and every state carries the same random
        per-token tail. A strategy whose output is sum_n w_n s_n with weights summing
        to 1 returns w_n in coordinate n, 0 in coordinate N, and the tail unchanged.
        Each run is (where, input state, output, hop log), run once per checker.
        """
        runs = []
        tail = torch.randn(3, 5, 3, generator=torch.Generator().manual_seed(2))  # (B, L, T)
        for scope in self._scopes():
            hops_cap = self._strategy(scope, d_model=8).max_hops()
            for mode in ("train", "eval"):
                for perturbed in (False, True):
                    log = _HopLog(hops_cap, tail)
                    state = log.marker(hops_cap)  # (B, L, N + 1 + T)
                    seed_everything(0)
                    strategy = self._strategy(scope, d_model=state.shape[-1]).train(mode == "train")
                    if perturbed:
                        _perturb(strategy, seed=1)
                    where = f"{scope} scope, {mode} mode{', perturbed weights' if perturbed else ''}"
                    try:
                        with torch.no_grad():
                            out = strategy(state, log.hop)
                    except _Problem as problem:
                        _fail(f"{problem} ({where})")
                    runs.append((where, state, out, log))
        return runs

    def _check_hop_protocol(self) -> None:
        for where, state, out, log in self._synthetic:
            if not isinstance(out, PonderOutput):
                _fail(f"forward returned {type(out).__name__}, expected a PonderOutput ({where})")
            if not log.hops:
                _fail(f"the hop function was never called ({where})")
            _expect_shape(f"PonderOutput.output ({where})", out.output, tuple(state.shape))
            if out.output.dtype != state.dtype:
                _fail(f"output dtype {out.output.dtype} differs from the state's {state.dtype} ({where})")

    def _check_halting_weights(self) -> None:
        for where, _, out, log in self._synthetic:
            cap = log.cap
            output = out.output.float()
            weights = output[..., :cap]  # (B, L, N) weight of hop n's state
            kept_input = output[..., cap]  # (B, L) weight of the input state
            total = weights.sum(-1) + kept_input
            if _max_abs(total - 1.0) > 1e-4:
                _fail(
                    f"halting weights sum to values in [{float(total.min()):.4f}, {float(total.max()):.4f}], "
                    f"not 1: the output must be a weighted combination of hop states whose weights sum to 1 ({where})"
                )
            if _max_abs(output[..., cap + 1 :] - log.tail) > 1e-4:
                _fail(f"the output is not a weighted combination of hop states ({where})")
            if _max_abs(kept_input) > 1e-4:
                _fail(f"the output keeps weight {_max_abs(kept_input):.4f} on the input state; it must combine hop states ({where})")
            counted = torch.ceil(out.hops.float() - 1e-4)  # (B, L)
            hop_index = torch.arange(cap).view(1, 1, cap)
            beyond = (hop_index >= counted.unsqueeze(-1)) & (weights.abs() > 1e-4)
            if bool(beyond.any()):
                _fail(f"the output uses states of hops beyond the `hops` it reports for {int(beyond.any(-1).sum())} tokens ({where})")
            if out.hop_weights is not None:
                given = torch.stack([w.float() for w in out.hop_weights], dim=-1)  # (B, L, n)
                count = given.shape[-1]
                if count > cap or given.shape[:2] != weights.shape[:2]:
                    _fail(f"hop_weights has {count} entries of shape {tuple(given.shape[:2])}; expected at most "
                          f"{cap} of shape {tuple(weights.shape[:2])} ({where})")
                gap = max(_max_abs(given - weights[..., :count]), _max_abs(weights[..., count:]))
                if gap > 1e-4:
                    _fail(f"hop_weights do not give the output's combination of hop states (off by {gap:.2e}) ({where})")

    def _check_halting_stats(self) -> None:
        for where, state, out, log in self._synthetic:
            cap, shape = log.cap, tuple(state.shape[:2])
            for field_name in ("hops", "ponder_cost", "remainder"):
                value = getattr(out, field_name)
                _expect_shape(f"PonderOutput.{field_name} ({where})", value, shape)
                _expect_finite(f"PonderOutput.{field_name} ({where})", value)
            hops = out.hops.float()
            if float(hops.min()) < 1 - 1e-5 or float(hops.max()) > cap + 1e-5:
                _fail(f"hops range over [{float(hops.min())}, {float(hops.max())}], outside [1, max_hops()={cap}] ({where})")
            over = hops > log.executed + 1e-4
            if bool(over.any()):
                _fail(f"hops exceed the hops actually run for {int(over.sum())} tokens ({where})")
            if out.aux_loss is not None:
                if out.aux_loss.numel() != 1:
                    _fail(f"aux_loss must be a scalar (shape {tuple(out.aux_loss.shape)}) ({where})")
                _expect_finite(f"aux_loss ({where})", out.aux_loss)
            if (out.hop_states is None) != (out.hop_probs is None):
                _fail(f"hop_states and hop_probs must be given together ({where})")
            if out.hop_states is not None:
                count = len(out.hop_states)
                _expect_shape(f"hop_probs ({where})", out.hop_probs, (*shape, count))
                for index, hop_state in enumerate(out.hop_states):
                    _expect_shape(f"hop_states[{index}] ({where})", hop_state, tuple(state.shape))
                probs = out.hop_probs.float()
                if float(probs.min()) < -1e-6 or _max_abs(probs.sum(-1) - 1.0) > 1e-4:
                    _fail(f"hop_probs must be non-negative and sum to 1 over hops ({where})")

    def _check_packed_depth(self) -> None:
        """Depth-scope inference on packed rows gives what the dense hops give."""
        if "depth" not in self._scopes():
            return
        ids = _token_ids(3, 7, seed=5)
        padded = torch.ones(3, 7, dtype=torch.bool)
        padded[1, 4:] = False
        for scale in (0.5, 3.0):  # small and large halting weights: mixed exit layers
            model = self._model(seed=0, scope="depth").eval()
            _perturb(model.sites[0], seed=3, scale=scale)
            for mask in (None, padded):
                where = f"depth scope, weights perturbed by {scale}, {'padded' if mask is not None else 'no padding'}"
                outputs = []
                for packed in (True, False):
                    model.packed_inference = packed
                    seed_everything(1)
                    with torch.no_grad():
                        outputs.append(model(ids, mask=mask))
                packed_out, dense_out = outputs
                gap = _max_abs(packed_out.logits - dense_out.logits)
                if gap > 1e-5 * max(1.0, _max_abs(dense_out.logits)):
                    _fail(f"packed rows give logits {gap:.2e} away from forward's ({where})")
                for field_name in ("hops", "layers", "remainder", "ponder_cost"):
                    given, expected = getattr(packed_out.stats, field_name), getattr(dense_out.stats, field_name)
                    _expect_shape(f"{field_name} on packed rows ({where})", given, tuple(expected.shape))
                    if _max_abs(given.float() - expected.float()) > 1e-5:
                        _fail(f"packed rows give other {field_name} than forward ({where})")


class _HopLog:
    """A marker hop function that checks the hop protocol and counts hops per token."""

    def __init__(self, cap: int, tail: Tensor):
        self.cap = cap
        self.tail = tail  # (B, L, T)
        self.shape = (*tail.shape[:2], cap + 1 + tail.shape[-1])  # (B, L, N + 1 + T)
        self.hops: list[int] = []
        self.executed = torch.zeros(tail.shape[:2])  # (B, L) hops run per token

    def marker(self, n: int) -> Tensor:
        """The marker state of hop n: e_n in the first N + 1 coordinates, then the tail."""
        state = torch.zeros(self.shape)
        state[..., n] = 1.0
        state[..., self.cap + 1 :] = self.tail
        return state

    def hop(self, state: Tensor, n: int, active: Tensor | None) -> Tensor:
        if not isinstance(n, int):  # a tensor hop index is no int either
            _fail(f"hop called with n={n!r}; n must be a Python int")
        if n != len(self.hops):
            _fail(f"hop called with n={n} after hops {self.hops}; hops must be 0, 1, 2, ... in order")
        if n >= self.cap:
            _fail(f"hop called with n={n}, but max_hops() is {self.cap}")
        if tuple(state.shape) != self.shape:
            _fail(f"hop called with a state of shape {tuple(state.shape)}, expected {self.shape}")
        self.hops.append(n)
        new = self.marker(n).to(state.dtype)
        if active is None:
            self.executed += 1
            return new
        if not isinstance(active, Tensor) or active.dtype != torch.bool or tuple(active.shape) != self.shape[:2]:
            _fail(f"hop called with active={active!r}; it must be None or a (B, L) bool tensor")
        self.executed += active.float()
        return torch.where(active.unsqueeze(-1), new, state)  # the core freezes inactive tokens
