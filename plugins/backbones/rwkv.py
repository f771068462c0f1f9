"""`rwkv`: RWKV-4 layers (time-mix WKV attention + channel-mix).

Paper: Peng et al., "RWKV: Reinventing RNNs for the Transformer Era", Findings of EMNLP
2023, arXiv 2305.13048.

Token shift: every projection sees mu * x_t + (1 - mu) * x_{t-1} (x_{-1} = 0), mu per channel.
Time-mix (the mixer), per channel with decay w = exp(time_decay) > 0 and bonus u:
  r, k, v = W_r shift_r(x), W_k shift_k(x), W_v shift_v(x)
  wkv_t = (sum_{i<t} e^{-(t-1-i) w + k_i} v_i + e^{u + k_t} v_t)
        / (sum_{i<t} e^{-(t-1-i) w + k_i}     + e^{u + k_t})
  out_t = W_o (sigmoid(r_t) * wkv_t)
Channel-mix (replaces the MLP): sigmoid(W_r' shift(x)) * W_v' relu(W_k' shift(x))^2,
hidden width mlp_ratio * d_model (4, the paper's).

The sums over i < t are the states of the linear recurrence
s_t = e^{-w} s_{t-1} + e^{k_t} [v_t, 1]. Fast form: a parallel scan of that recurrence in
log space (`linear_recurrence.log_space_linear_scan`, O(L log L), no overflow however large
k grows); reference: the paper's step loop over (a, b) with a running-max stabiliser.

Init (in the spirit of the paper's: fast-to-slow decays across channels, mixing ratios
spread between the current and the previous token): time_decay linear in [-5, 3] over
channels, u = 0, mu_k = mu_v ramping 1 -> 1/D, mu_r from 1 -> 1/2. Stack: pre-norm
residual, 2 layers (seed 003).

`variant: seq_icl` is seq_icl's `RWKVLayer` as seq_icl runs it (kept as seq_icl has it, so a
study can ask what it costs): its WKV kernel adds `+exp(time_decay)` to the log-state each
step, so weights on past tokens GROW by e^{w} per step instead of decaying (upstream RWKV
and the paper use `-exp`); time_decay, time_first and the three mixing ratios start from
N(0, 1); the output linear keeps the plain init_std (seq_icl names it `output`, which the
GPT-2 rescaling skips); the FFN is the stack's GELU MLP (seq_icl's lm_simple), not the
channel mix.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from ponderlab.core.hookspecs import hookimpl

from .linear_recurrence import compute_dtype, full_precision, log_space_linear_scan
from .mixer_stack import MixerBackbone, MixerStackConfig, SequenceMixer


class RWKVConfig(MixerStackConfig):
    name: Literal["rwkv"] = "rwkv"
    decay_init_min: float = Field(-5.0, description="time_decay (log w) of the slowest channel.")
    decay_init_max: float = Field(3.0, description="time_decay (log w) of the fastest channel.")
    # variant (MixerStackConfig): `seq_icl` grows past weights by e^{exp(time_decay)} per step.


def token_shift(x: Tensor) -> Tensor:
    """x_{t-1} with zeros before the start: (B, L, D) -> (B, L, D)."""
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)


def interpolate(x: Tensor, previous: Tensor, mix: Tensor) -> Tensor:
    return x * mix + previous * (1 - mix)


def wkv_parallel(w: Tensor, u: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """WKV for all t: w, u (D,); k, v (B, L, D) -> (B, L, D). A negative w (seq_icl's
    variant) makes the past grow by e^{-w} per step; the log-space forms handle it alike.

    The sums over i < t are the states of `s_t = e^{-w} s_{t-1} + e^{k_t} [v_t, 1]`, taken
    from a log-space parallel scan; the bonus term joins with one more detached max-shift.
    """
    values = torch.stack([v, torch.ones_like(v)], dim=-1)  # (B, L, D, 2)
    scale, scaled = log_space_linear_scan(-w, k, values)  # state after t = e^scale * scaled
    # The state before t: nothing (scale -inf) at t = 0.
    scale = torch.cat([torch.full_like(scale[:, :1], float("-inf")), scale[:, :-1]], dim=1)
    scaled = torch.cat([torch.zeros_like(scaled[:, :1]), scaled[:, :-1]], dim=1)
    bonus = u + k  # (B, L, D)
    shift = torch.maximum(scale, bonus).detach()
    past, now = torch.exp(scale - shift), torch.exp(bonus - shift)
    return (past * scaled[..., 0] + now * v) / (past * scaled[..., 1] + now)


def wkv_recurrent(w: Tensor, u: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """The paper's recurrence: a, b decayed by e^{-w}, kept as (a, b) * e^{p} for stability."""
    a = torch.zeros_like(k[:, 0])  # (B, D)
    b = torch.zeros_like(k[:, 0])
    p = torch.full_like(k[:, 0], float("-inf"))
    outputs = []
    for k_t, v_t in zip(k.unbind(1), v.unbind(1), strict=True):
        bonus = u + k_t
        q = torch.maximum(p, bonus)
        old, new = torch.exp(p - q), torch.exp(bonus - q)
        outputs.append((old * a + new * v_t) / (old * b + new))
        decayed = p - w
        q = torch.maximum(decayed, k_t)
        old, new = torch.exp(decayed - q), torch.exp(k_t - q)
        a, b, p = old * a + new * v_t, old * b + new, q
    return torch.stack(outputs, dim=1)


class RWKVTimeMix(SequenceMixer):
    """Token shift -> r, k, v -> WKV -> sigmoid(r) gate -> output projection."""

    def __init__(self, d_model: int, decay_min: float, decay_max: float, seq_icl: bool = False):
        super().__init__()
        #: seq_icl's sign: the log-state gains +exp(time_decay) per step (the paper: -exp).
        self.decay_sign = 1.0 if seq_icl else -1.0
        #: seq_icl's output linear (`output`) misses the GPT-2 1/sqrt(2 n_layers) scale.
        self.plain_output_init = seq_icl
        if seq_icl:  # seq_icl: every one of these from N(0, 1)
            decay, first, mix_k, mix_v, mix_r = torch.randn(5, d_model)
        else:
            ramp = torch.arange(d_model).float() / d_model  # 0 .. (D-1)/D
            decay = torch.linspace(decay_min, decay_max, d_model)
            first, mix_k, mix_v, mix_r = torch.zeros(d_model), 1 - ramp, 1 - ramp, 1 - 0.5 * ramp
        self.time_decay = nn.Parameter(decay)  # log w
        self.time_first = nn.Parameter(first)  # u
        self.mix_k = nn.Parameter(mix_k)
        self.mix_v = nn.Parameter(mix_v)
        self.mix_r = nn.Parameter(mix_r)
        self.key = nn.Linear(d_model, d_model, bias=False)
        self.value = nn.Linear(d_model, d_model, bias=False)
        self.receptance = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def mix_tokens(self, x: Tensor, *, reference: bool) -> Tensor:  # (B, L, D) -> (B, L, D)
        previous = token_shift(x)
        k = self.key(interpolate(x, previous, self.mix_k))  # (B, L, D)
        v = self.value(interpolate(x, previous, self.mix_v))
        r = self.receptance(interpolate(x, previous, self.mix_r))
        dtype = compute_dtype(x)
        w = -self.decay_sign * torch.exp(self.time_decay.to(dtype))  # state gains -w per step
        u = self.time_first.to(dtype)
        with full_precision(x):
            k, v = k.to(dtype), v.to(dtype)
            wkv = wkv_recurrent(w, u, k, v) if reference else wkv_parallel(w, u, k, v)
        return torch.sigmoid(r) * wkv.to(x.dtype)

    def project(self, mixed: Tensor, x: Tensor) -> Tensor:  # (..., D) -> (..., D)
        return self.out_proj(mixed)


class RWKVChannelMix(nn.Module):
    """sigmoid(W_r shift_r(x)) * W_v relu(W_k shift_k(x))^2: (B, L, D) -> (B, L, D)."""

    def __init__(self, d_model: int, ratio: int):
        super().__init__()
        ramp = torch.arange(d_model).float() / d_model
        self.mix_k = nn.Parameter(1 - ramp)
        self.mix_r = nn.Parameter(1 - ramp)
        self.key = nn.Linear(d_model, ratio * d_model, bias=False)
        self.receptance = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(ratio * d_model, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.mix(x, token_shift(x))

    def mix_rows(self, x: Tensor, rows: Tensor) -> Tensor:
        """The output at the tokens of rows (K,) (flat b * L + t) only: x (B, L, D) -> (K, D)."""
        flat = x.reshape(-1, x.shape[-1])  # (B*L, D)
        previous = flat.index_select(0, (rows - 1).clamp_min(0))  # (K, D): token t-1
        previous = previous * (rows % x.shape[1] != 0).unsqueeze(1).to(x.dtype)  # x_{-1} = 0
        return self.mix(flat.index_select(0, rows), previous)

    def mix(self, x: Tensor, previous: Tensor) -> Tensor:  # (..., D), (..., D) -> (..., D)
        k = torch.relu(self.key(interpolate(x, previous, self.mix_k))) ** 2
        r = torch.sigmoid(self.receptance(interpolate(x, previous, self.mix_r)))
        return r * self.out_proj(k)


class RWKVBackbone(MixerBackbone):
    config_class = RWKVConfig
    config: RWKVConfig

    def make_mixer(self, layer: int) -> nn.Module:
        c = self.config
        return RWKVTimeMix(c.d_model, c.decay_init_min, c.decay_init_max, seq_icl=self.seq_icl)

    def make_ffn(self, layer: int) -> nn.Module | None:
        ratio = self.config.mlp_ratio
        if self.seq_icl:  # seq_icl's lm_simple: the GELU MLP after every mixer, RWKV's too
            return super().make_ffn(layer)
        return RWKVChannelMix(self.config.d_model, ratio) if ratio else None


@hookimpl
def ponderlab_register_backbones(register):
    register(RWKVBackbone)
