"""The halting toolkit: what built-in and third-party halting strategies are made of.

    from ponderlab.core.halting import ACTConfig, CumulativeHalting, HaltingUnit

* contracts: `HaltingStrategy`, `HaltingConfig`, `PonderOutput`, `HopFn`;
* `ACTConfig`: `max_hops` and the depth-scope check; `require_scope`, `depth_cap_error`,
  `renamed_key` (an option's old spec key loads with a DeprecationWarning);
* units: `HaltingUnit` (linear), `HaltingMLP`, `logit`, `accumulation_dtype`;
* the one cumulative ACT loop (`cumulative_halting_loop`, `CumulativeHalting`), and
  tensor2tensor's per-hop bookkeeping (`t2t_hop_update`, for `ut`-style strategies);
* `fixed_hops_output` for strategies without halting weights, `accumulate`,
  `interpolation_weights` (the effective hop weights of `y = w s + (1 - w) y_prev`);
* `ExitHead` (the output head inside a loop, for strategies declaring `head`), `takes_keyword`;
* `RunningTokens` (stop a loop once no token runs) from `ponderlab.core.early_exit`.
"""

from ponderlab.core.config import HaltingConfig, Scope
from ponderlab.core.early_exit import RunningTokens
from ponderlab.core.interfaces import HaltingStrategy, HopFn, PonderOutput

from .config import ACTConfig, depth_cap_error, renamed_key, require_scope
from .head import ExitHead, takes_keyword
from .loop import CumulativeHalting, HaltingFn, cumulative_halting_loop
from .outputs import accumulate, fixed_hops_output, interpolation_weights
from .t2t import t2t_hop_update
from .units import HaltingMLP, HaltingUnit, accumulation_dtype, logit

__all__ = [
    "ACTConfig",
    "CumulativeHalting",
    "ExitHead",
    "HaltingConfig",
    "HaltingFn",
    "HaltingMLP",
    "HaltingStrategy",
    "HaltingUnit",
    "HopFn",
    "PonderOutput",
    "RunningTokens",
    "Scope",
    "accumulate",
    "accumulation_dtype",
    "cumulative_halting_loop",
    "depth_cap_error",
    "fixed_hops_output",
    "interpolation_weights",
    "logit",
    "renamed_key",
    "require_scope",
    "t2t_hop_update",
    "takes_keyword",
]
