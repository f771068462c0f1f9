"""Helpers shared by the early-exit tests, which check a model that skips halted tokens
against its twin that computes every token, with the same weights: the full-computation
block classes, random halting units, row counters and the comparisons of the two."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ponderlab.core.interfaces import Block, BlockContext


def assert_same_logits_and_gradients(fast: nn.Module, full: nn.Module, fast_logits: torch.Tensor,
                                     full_logits: torch.Tensor) -> None:
    """Equal logits, and equal gradients of one loss for every parameter (in the same order)."""
    torch.testing.assert_close(fast_logits, full_logits)
    fast_logits.square().sum().backward()
    full_logits.square().sum().backward()
    for (name, fast_param), full_param in zip(fast.named_parameters(), full.parameters(), strict=True):
        torch.testing.assert_close(fast_param.grad, full_param.grad, msg=name)


def full_computation_class(block_class: type[Block]) -> type[Block]:
    """A subclass of `block_class` that computes every token whatever the active mask (the
    core then freezes halted tokens): the reference for a block's early-exit paths."""

    def forward(self, hidden, context):
        return block_class.forward(self, hidden, BlockContext(layer=context.layer, hop=context.hop))

    return type(f"Full{block_class.__name__}", (block_class,), {
        "forward_rows": None, "forward": forward,
    })


def make_full_computation(model: nn.Module) -> None:
    """Switch every block of `model`'s backbone to its full-computation class."""
    for block in model.backbone.blocks:
        block.__class__ = full_computation_class(type(block))


def randomize_halting_units(model: nn.Module, std: float, seed: int = 3) -> None:
    """Random weights for every halting unit (linear, or MLP), so that tokens exit at different layers."""
    for site in model.sites:
        for unit in site.units:
            for linear in (unit.linear,) if hasattr(unit, "linear") else (unit.hidden, unit.out):
                nn.init.normal_(linear.weight, std=std, generator=torch.Generator().manual_seed(seed))


def halting_twins(build: Callable[[], nn.Module], std: float) -> tuple[nn.Module, nn.Module]:
    """(fast, full): two models from `build()` (which must give equal weights each call), with
    the same random halting units (`randomize_halting_units`, std `std`); `full` computes every token."""
    fast, full = build(), build()
    for model in (fast, full):
        randomize_halting_units(model, std=std)
    make_full_computation(full)
    return fast, full


def block_rows(model: nn.Module, part: Callable[[nn.Module], nn.Module]) -> list[int]:
    """A list that records how many tokens each call of `part(block)` gets, for every block of `model`."""
    counts: list[int] = []
    for block in model.backbone.blocks:
        count_rows(part(block), counts)
    return counts


def count_rows(module: nn.Module, counts: list[int]) -> None:
    """Append to `counts` the number of tokens of every input `module` is called on."""
    module.register_forward_pre_hook(lambda _, args: counts.append(args[0].shape[:-1].numel()))


def assert_same_inference(fast: nn.Module, full: nn.Module, ids: torch.Tensor) -> list[int]:
    """Both twins at inference (depth scope): a mix of early and late exits, the same layer
    counts and logits. Returns how many tokens each layer should compute in the fast twin
    (every token at layer 1, then those still running; layers nobody reaches are skipped)."""
    with torch.no_grad():
        fast_out, full_out = fast.eval()(ids), full.eval()(ids)
    layers = fast_out.stats.layers
    assert 1 < len(set(layers.flatten().tolist()))  # a mix of early and late exits
    assert torch.equal(layers, full_out.stats.layers)
    torch.testing.assert_close(fast_out.logits, full_out.logits)
    n_layers = len(fast.backbone.blocks)
    running = [int((layers >= n).sum()) for n in range(2, n_layers + 1)]
    return [ids.numel()] + [count for count in running if count]
