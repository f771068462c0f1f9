"""`s4d`: diagonal state space model layers (S4D).

Paper: Gu, Gupta, Goel, Re, "On the Parameterization and Initialization of Diagonal State
Space Models", NeurIPS 2022, arXiv 2206.11893.

Mixer: every channel h of the normalised input runs its own diagonal SSM
`x_t = dA x_{t-1} + dB u_t`, `y_t = 2 Re(C x_t) + D u_t` (`linear_recurrence.DiagonalSSM`),
then GELU and a position-wise GLU output projection Linear(D, 2D) (the S4D standalone
block). Fast form: the SSM's convolution kernel `K_l = 2 Re(C dB dA^l)` applied with an
FFT (O(L log L)); reference: the step loop over the state.

Defaults (the paper's S4D-Lin setting): d_state N = 64 (32 complex conjugate pairs),
A_n = -1/2 + i pi n, B = 1, C ~ CN(0, 1), dt log-uniform in [0.001, 0.1], zero-order-hold
discretisation. Stack (seed 003): 2 pre-norm layers with a 4x MLP. The paper trains A and
dt with a lower learning rate and no weight decay; with `variant: paper` all parameters
share the optimiser's settings.

`variant: seq_icl` is seq_icl's standalone `S4D` layer as its configs build it: S4D-Inv
init (A_n = -0.5001 + i N/pi (N/(2n+1) - 1)) with ONE A shared by all channels, a random
B ~ CN(0, 1) normalised by sqrt(2 sum |B/A|^2) folded into C, zero-order hold, then GELU
and a plain Linear(D, D) (no GLU) whose init keeps the unscaled init_std (seq_icl names it
`output_linear`); A and dt train at lr min(1e-3, lr) with no weight decay
(`optimizer_groups`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.nn import functional as F

from ponderlab.core.hookspecs import hookimpl

from .linear_recurrence import DiagonalSSM
from .mixer_stack import MixerBackbone, MixerStackConfig, SequenceMixer


class DiagonalSSMConfig(MixerStackConfig):
    """Options of a stack whose mixers hold `DiagonalSSM`s (S4D, H3)."""

    d_state: int = Field(64, ge=2, description="Real state size N per channel (N/2 complex pairs).")
    dt_min: float = Field(1e-3, gt=0, description="Lower end of the log-uniform step-size init.")
    dt_max: float = Field(1e-1, gt=0, description="Upper end of the log-uniform step-size init.")

    @model_validator(mode="after")
    def _check_ssm(self):
        if self.d_state % 2:
            raise ValueError(f"d_state must be even (complex conjugate pairs), got {self.d_state}")
        if self.dt_min > self.dt_max:
            raise ValueError(f"dt_min {self.dt_min} is larger than dt_max {self.dt_max}")
        return self


class S4DConfig(DiagonalSSMConfig):
    name: Literal["s4d"] = "s4d"


class S4DMixer(SequenceMixer):
    """Diagonal SSM per channel -> GELU -> GLU projection: (B, L, D) -> (B, L, D)."""

    def __init__(
        self, d_model: int, d_state: int, dt_min: float, dt_max: float, seq_icl: bool = False
    ):
        super().__init__()
        if seq_icl:  # S4D-Inv, one A for all channels, random normalised B (seq_icl's S4D)
            options = {"init": "inv", "a_real": 0.5 + 1e-4, "random_b": True, "tied": True}
        else:
            options = {}
        self.ssm = DiagonalSSM(d_model, d_state, dt_min, dt_max, **options)
        self.glu = not seq_icl
        self.plain_output_init = seq_icl
        self.out_proj = nn.Linear(d_model, 2 * d_model if self.glu else d_model)

    def mix_tokens(self, x: Tensor, *, reference: bool) -> Tensor:  # (B, L, D) -> (B, L, D)
        u = x.transpose(1, 2)  # (B, D, L): one SSM per channel
        y = self.ssm.recurrence(u) if reference else self.ssm(u)
        return F.gelu(y.transpose(1, 2).to(x.dtype))

    def project(self, mixed: Tensor, x: Tensor) -> Tensor:  # (..., D) -> (..., D)
        projected = self.out_proj(mixed)
        return F.glu(projected, dim=-1) if self.glu else projected


class S4DBackbone(MixerBackbone):
    config_class = S4DConfig
    config: S4DConfig

    def make_mixer(self, layer: int) -> nn.Module:
        c = self.config
        return S4DMixer(c.d_model, c.d_state, c.dt_min, c.dt_max, seq_icl=self.seq_icl)


@hookimpl
def ponderlab_register_backbones(register):
    register(S4DBackbone)
