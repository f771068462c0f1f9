"""`mamba`: Mamba blocks (Gu & Dao 2023, arXiv 2312.00752) on Hugging Face's `MambaMixer` weights.

Each layer is `x + mixer(RMSNorm(x))`; the mixer (in_proj, depthwise causal conv,
selective SSM, SiLU gate, out_proj) keeps the parameters, names and
initialisation of `transformers`' `MambaMixer`, but runs our own forward so that
the scan is fast everywhere (see `selective_scan.py`):

  scan: auto       mamba-ssm / causal-conv1d CUDA kernels when they import and the
                   tensors are on CUDA (`pip install ponderlab[cuda]`), else the
                   fast PyTorch scan
        torch      the fast PyTorch scan (hand-written backward), any device
        cuda       the kernels, an error where they cannot run
        reference  the sequential PyTorch loop (slow; for checks)

Defaults: d_state 32 (seed 000's Mamba), expand 2, conv kernel 4,
dt_rank ceil(d_model / 16). A Mamba layer mixes the whole sequence, so with ACT
around a layer it is re-run over the full sequence on every hop. Halted tokens skip
the output projection only (early exit, `forward_rows`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ponderlab.core.config import BackboneConfig
from ponderlab.core.early_exit import gather_active
from ponderlab.core.hookspecs import hookimpl
from ponderlab.core.interfaces import Backbone, Block, BlockContext

from .selective_scan import cuda_kernels, selective_scan, selective_scan_reference

if TYPE_CHECKING:  # transformers is imported where a model is built: listing plugins stays quick
    from transformers import MambaConfig as HFMambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer

ScanImpl = Literal["auto", "torch", "cuda", "reference"]


class MambaConfig(BackboneConfig):
    name: Literal["mamba"] = "mamba"
    d_state: int = Field(32, ge=1, description="SSM state size N per channel (seed 000: 32).")
    expand: int = Field(2, ge=1, description="Inner width = expand * d_model.")
    d_conv: int = Field(4, ge=1, description="Depthwise causal convolution kernel size.")
    dt_rank: int | None = Field(None, ge=1, description="Rank of the delta projection (default ceil(d_model/16)).")
    scan: ScanImpl = Field("auto", description="auto | torch | cuda | reference (see module docstring).")


def hf_mamba_config(config: MambaConfig, vocab_size: int) -> HFMambaConfig:
    """The Hugging Face config whose `MambaMixer` holds one of our layers' weights."""
    from transformers import MambaConfig as HFMambaConfig

    return HFMambaConfig(
        vocab_size=vocab_size,
        hidden_size=config.d_model,
        state_size=config.d_state,
        num_hidden_layers=config.n_layers,
        expand=config.expand,
        conv_kernel=config.d_conv,
        time_step_rank=config.dt_rank or math.ceil(config.d_model / 16),
        use_mambapy=False,
    )


def causal_depthwise_conv(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x (B, L, E), weight (E, K) -> (B, L, E): y_t = sum_k w_k x_{t-K+1+k} + b."""
    length = x.shape[1]
    kernel = weight.shape[1]
    out = F.conv1d(x.transpose(1, 2), weight.unsqueeze(1), bias, padding=kernel - 1, groups=weight.shape[0])
    return out[..., :length].transpose(1, 2)


def _use_kernels(scan: ScanImpl, hidden: Tensor) -> bool:
    """Whether `scan` runs on the CUDA kernels: they import and `hidden` lives on a CUDA device."""
    usable = hidden.is_cuda and cuda_kernels() is not None
    if scan == "cuda" and not usable:
        where = "a CUDA tensor" if hidden.is_cuda else f"a {hidden.device.type} tensor"
        raise RuntimeError(
            f"backbone.scan='cuda' needs mamba-ssm and causal-conv1d (pip install ponderlab[cuda]) "
            f"and CUDA inputs; got {where}, kernels importable: {cuda_kernels() is not None}"
        )
    return usable and scan in ("auto", "cuda")


def mixer_forward(mixer: MambaMixer, hidden: Tensor, scan: ScanImpl = "auto") -> Tensor:
    """The MambaMixer computation on `mixer`'s weights: (B, L, D) -> (B, L, D)."""
    return mixer.out_proj(gated_scan(mixer, hidden, scan).to(hidden.dtype))


def gated_scan(mixer: MambaMixer, hidden: Tensor, scan: ScanImpl = "auto") -> Tensor:
    """The mixer up to its output projection (which is position-wise): (B, L, D) -> (B, L, E)."""
    n_state, rank = mixer.ssm_state_size, mixer.time_step_rank
    x, z = mixer.in_proj(hidden).chunk(2, dim=-1)  # (B, L, E) each
    A = -torch.exp(mixer.A_log.float())  # (E, N)
    conv_weight = mixer.conv1d.weight.squeeze(1)  # (E, K)
    if _use_kernels(scan, hidden):
        selective_scan_fn, causal_conv1d_fn = cuda_kernels()
        x = causal_conv1d_fn(x.transpose(1, 2).contiguous(), conv_weight, mixer.conv1d.bias, activation="silu")
        dt, B, C = torch.split(mixer.x_proj(x.transpose(1, 2)), [rank, n_state, n_state], dim=-1)
        delta = mixer.dt_proj.weight @ dt.transpose(1, 2)  # (B, E, L), bias added by the kernel
        y = selective_scan_fn(
            x,
            delta,
            A,
            B.transpose(1, 2).contiguous(),  # (B, N, L)
            C.transpose(1, 2).contiguous(),
            mixer.D.float(),
            z=z.transpose(1, 2).contiguous(),
            delta_bias=mixer.dt_proj.bias.float(),
            delta_softplus=True,
        )  # (B, E, L)
        return y.transpose(1, 2)
    x = F.silu(causal_depthwise_conv(x, conv_weight, mixer.conv1d.bias))  # (B, L, E)
    dt, B, C = torch.split(mixer.x_proj(x), [rank, n_state, n_state], dim=-1)
    delta = F.softplus(mixer.dt_proj(dt))  # (B, L, E)
    scan_fn = selective_scan_reference if scan == "reference" else selective_scan
    return scan_fn(x, delta, A, B, C, mixer.D, z)  # (B, L, E)


class MambaLayer(Block):
    """Pre-norm residual Mamba layer: (B, L, D) -> (B, L, D), causal.

    With an active subset (or packed rows) the output projection runs for those tokens
    only; the input projection, convolution and scan run over the whole sequence.
    """

    def __init__(self, hf_config: HFMambaConfig, layer_index: int, scan: ScanImpl):
        from transformers.models.mamba.modeling_mamba import MambaMixer, MambaRMSNorm

        super().__init__()
        self.norm = MambaRMSNorm(hf_config.hidden_size, eps=hf_config.layer_norm_epsilon)
        self.mixer = MambaMixer(hf_config, layer_idx=layer_index)
        self.scan = scan

    def forward(self, hidden: Tensor, context: BlockContext) -> Tensor:  # (B, L, D) -> (B, L, D)
        return hidden + mixer_forward(self.mixer, self.norm(hidden), self.scan)

    def forward_rows(self, hidden: Tensor, rows: Tensor, states: Tensor, context: BlockContext) -> Tensor:
        normed = self.norm(hidden)  # (B, L, D)
        gated = gated_scan(self.mixer, normed, self.scan)  # (B, L, E): the scan reads every token
        return states + self.mixer.out_proj(gather_active(gated, rows).to(normed.dtype))  # (K, D)


class MambaBackbone(Backbone):
    config_class = MambaConfig

    def __init__(self, config: MambaConfig, *, vocab_size: int):
        super().__init__(config, vocab_size=vocab_size)
        from transformers.models.mamba.modeling_mamba import MambaRMSNorm

        hf = hf_mamba_config(config, vocab_size)
        self.embedding = nn.Embedding(vocab_size, config.d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.blocks = nn.ModuleList(MambaLayer(hf, i, config.scan) for i in range(config.n_layers))
        self.norm = MambaRMSNorm(config.d_model, eps=hf.layer_norm_epsilon)


@hookimpl
def ponderlab_register_backbones(register):
    register(MambaBackbone)
