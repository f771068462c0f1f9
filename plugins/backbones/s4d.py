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
dt with a lower learning rate and no weight decay; here all parameters share the
optimiser's settings.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.nn import functional as F

from ponderlab.core.hookspecs import hookimpl

from .linear_recurrence import DiagonalSSM
from .mixer_stack import MixerBackbone, MixerStackConfig, SequenceMixer


class S4DConfig(MixerStackConfig):
    name: Literal["s4d"] = "s4d"
    d_state: int = Field(64, ge=2, description="Real state size N per channel (N/2 complex pairs).")
    dt_min: float = Field(1e-3, gt=0, description="Lower end of the log-uniform step-size init.")
    dt_max: float = Field(1e-1, gt=0, description="Upper end of the log-uniform step-size init.")

    @model_validator(mode="after")
    def _check(self):
        if self.d_state % 2:
            raise ValueError(f"d_state must be even (complex conjugate pairs), got {self.d_state}")
        if self.dt_min > self.dt_max:
            raise ValueError(f"dt_min {self.dt_min} is larger than dt_max {self.dt_max}")
        return self


class S4DMixer(SequenceMixer):
    """Diagonal SSM per channel -> GELU -> GLU projection: (B, L, D) -> (B, L, D)."""

    def __init__(self, d_model: int, d_state: int, dt_min: float, dt_max: float):
        super().__init__()
        self.ssm = DiagonalSSM(d_model, d_state, dt_min, dt_max)
        self.out_proj = nn.Linear(d_model, 2 * d_model)

    def mix_tokens(self, x: Tensor, *, reference: bool) -> Tensor:  # (B, L, D) -> (B, L, D)
        u = x.transpose(1, 2)  # (B, D, L): one SSM per channel
        y = self.ssm.recurrence(u) if reference else self.ssm(u)
        return F.gelu(y.transpose(1, 2).to(x.dtype))

    def project(self, mixed: Tensor, x: Tensor) -> Tensor:  # (..., D) -> (..., D)
        return F.glu(self.out_proj(mixed), dim=-1)


class S4DBackbone(MixerBackbone):
    config_class = S4DConfig
    config: S4DConfig

    def make_mixer(self, layer: int) -> nn.Module:
        c = self.config
        return S4DMixer(c.d_model, c.d_state, c.dt_min, c.dt_max)


@hookimpl
def ponderlab_register_backbones(register):
    register(S4DBackbone)
