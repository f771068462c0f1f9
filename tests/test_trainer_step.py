"""One real train step: clipped gradients, AdamW with decay on matrices only, the logged metrics."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from twin_checks import randomize_halting_units

from ponderlab.core.config import TrainingConfig
from ponderlab.core.errors import NonFiniteLossError
from ponderlab.core.interfaces import IGNORE_INDEX
from ponderlab.core.model import ModelOutput
from ponderlab.core.run import build_model_from_spec, build_task
from ponderlab.core.spec import validate_spec
from ponderlab.core.trainer import Trainer, lr_factor

SPEC = {
    "seed": 3,
    "task": {"name": "binary_reverse", "length": 6, "train_size": 64, "validation_size": 8, "test_size": 8},
    "backbone": {"name": "lstm", "d_model": 16, "n_layers": 2},
    "halting": {"name": "graves", "max_hops": 3, "epsilon": 0.1, "time_penalty": 0.01},
    "training": {"steps": 4, "batch_size": 16, "warmup_steps": 0, "num_threads": 1},
}


def tiny_trainer(grad_clip: float | None, **training) -> Trainer:
    spec = validate_spec({**SPEC, "training": {**SPEC["training"], "grad_clip": grad_clip, **training}})
    task = build_task(spec)
    torch.manual_seed(0)
    model = build_model_from_spec(spec, task.vocab_size)
    return Trainer(model=model, task=task, data=task.build(spec.seed), config=spec.training, seed=spec.seed,
                   progress=False)


def reference_step(trainer: Trainer, batch: dict) -> tuple[ModelOutput, list[torch.Tensor]]:
    """The step's forward output and unclipped gradients, from a copy of the model."""
    model = copy.deepcopy(trainer.model).train()
    out = model(batch["input_ids"], labels=batch["labels"], mask=batch["mask"])
    out.loss.backward()
    return out, [param.grad.clone() for param in model.parameters()]


def gradients_at_optimizer_step(trainer: Trainer) -> list[list[torch.Tensor]]:
    """Record, at every optimizer step, the gradients the optimizer is about to apply."""
    seen: list[list[torch.Tensor]] = []
    trainer.optimizer.register_step_pre_hook(
        lambda optimizer, args, kwargs: seen.append([p.grad.clone() for p in trainer.model.parameters()])
    )
    return seen


def global_norm(gradients: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float(g.double().square().sum()) for g in gradients))


@pytest.mark.parametrize("grad_clip", [1e-3, 1e3, None])
def test_train_step_applies_gradients_clipped_to_grad_clip(grad_clip):
    """clip_grad_norm_: g * min(1, c / (|g| + 1e-6)) for the global norm |g| over every parameter;
    the logged grad_norm is |g| before clipping (NaN without clipping)."""
    trainer = tiny_trainer(grad_clip)
    batch = trainer.plan.batch(0)
    out, reference = reference_step(trainer, batch)
    seen = gradients_at_optimizer_step(trainer)
    metrics = trainer.train_step(batch)

    norm = global_norm(reference)
    assert 1e-2 < norm < 1e2  # so that 1e-3 clips and 1e3 does not
    scale = 1.0 if grad_clip is None else min(1.0, grad_clip / (norm + 1e-6))
    assert len(seen) == 1
    for applied, expected in zip(seen[0], reference, strict=True):
        torch.testing.assert_close(applied, expected * scale, rtol=1e-4, atol=1e-12)
    if grad_clip is None:
        assert math.isnan(metrics["grad_norm"])
    else:
        assert metrics["grad_norm"] == pytest.approx(norm, rel=1e-4)
        assert global_norm(seen[0]) == pytest.approx(min(norm, grad_clip), rel=1e-4)


def padded(batch: dict) -> dict:
    """The batch with its last two positions made padding in every other row."""
    batch = {key: value.clone() for key, value in batch.items()}
    batch["mask"][::2, -2:] = False
    batch["labels"][::2, -2:] = IGNORE_INDEX
    return batch


def test_train_step_logs_the_batch_loss_hops_and_next_learning_rate():
    """On a padded batch: the ponder cost in the loss and the logged hops count real tokens only
    (random halting units, so that tokens differ in ponder cost)."""
    trainer = tiny_trainer(1.0)
    randomize_halting_units(trainer.model, std=1.0)
    batch = padded(trainer.plan.batch(0))
    out, _ = reference_step(trainer, batch)
    masks = []
    trainer.model.register_forward_pre_hook(lambda module, args, kwargs: masks.append(kwargs["mask"]),
                                            with_kwargs=True)
    metrics = trainer.train_step(batch)
    assert len(masks) == 1 and torch.equal(masks[0], batch["mask"])  # the model sees the padding
    real = batch["mask"]
    loss, task_loss = float(out.loss.detach()), float(out.task_loss.detach())
    assert metrics["loss"] == pytest.approx(loss, rel=1e-6)
    assert metrics["task_loss"] == pytest.approx(task_loss, rel=1e-6)
    assert loss > task_loss  # the ponder cost term (time_penalty 0.01)
    assert metrics["mean_hops"] == pytest.approx(float(out.stats.hops[real].mean()), rel=1e-6)
    assert metrics["ponder_cost"] == pytest.approx(float(out.stats.ponder_cost.detach()[real].mean()), rel=1e-6)
    # after one of 4 steps without warmup: lr (1e-3) times 0.1 + 0.9 * (1 + cos(pi / 4)) / 2
    assert metrics["lr"] == pytest.approx(1e-3 * (0.1 + 0.45 * (1 + math.cos(math.pi / 4))))


def test_steps_follow_adamw_with_the_configured_betas_and_decay_on_matrices_only():
    """Two steps of AdamW by hand, from the gradients the optimizer received: matrices (not
    biases, norms or halting biases) shrink by lr * weight_decay, then move by
    lr * m_hat / (sqrt(v_hat) + eps) with the configured betas and the scheduled lr."""
    beta1, beta2, decay = 0.5, 0.75, 0.5  # decay: shrink by 0.995, far above rounding
    trainer = tiny_trainer(None, lr=0.01, weight_decay=decay, betas=[beta1, beta2])
    seen = gradients_at_optimizer_step(trainer)
    expected = [param.detach().clone() for param in trainer.model.parameters()]
    first_moments = [torch.zeros_like(param) for param in expected]
    second_moments = [torch.zeros_like(param) for param in expected]
    rates = [0.01, 0.01 * (0.1 + 0.45 * (1 + math.cos(math.pi / 4)))]  # no warmup, 4 steps
    for step, lr in enumerate(rates):
        trainer.train_step(trainer.plan.batch(step))
        for index, gradient in enumerate(seen[step]):
            first_moments[index] = beta1 * first_moments[index] + (1 - beta1) * gradient
            second_moments[index] = beta2 * second_moments[index] + (1 - beta2) * gradient.square()
            m_hat = first_moments[index] / (1 - beta1 ** (step + 1))
            v_hat = second_moments[index] / (1 - beta2 ** (step + 1))
            shrink = 1 - lr * decay if expected[index].dim() >= 2 else 1.0
            expected[index] = expected[index] * shrink - lr * m_hat / (v_hat.sqrt() + 1e-8)
    for (name, param), value in zip(trainer.model.named_parameters(), expected, strict=True):
        torch.testing.assert_close(param.detach(), value, rtol=1e-5, atol=1e-7, msg=name)


def test_non_finite_loss_before_any_checkpoint_says_so():
    trainer = tiny_trainer(1.0)
    with torch.no_grad():
        trainer.model.head.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError) as info:
        trainer.train_step(trainer.plan.batch(0))
    assert str(info.value) == "non-finite loss (nan) at step 1; no checkpoint was written yet"


def test_lr_schedule_edges():
    """No decay span (warmup is every step): full lr at the end of warmup; one step: the floor
    at once; after the last step the floor stays."""
    assert lr_factor(10, TrainingConfig(steps=10, warmup_steps=10, min_lr_ratio=0.1)) == 1.0
    assert lr_factor(1, TrainingConfig(steps=1, warmup_steps=0, min_lr_ratio=0.1)) == pytest.approx(0.1)
    assert lr_factor(30, TrainingConfig(steps=20, warmup_steps=0, min_lr_ratio=0.1)) == pytest.approx(0.1)


def test_train_step_runs_under_the_configured_precision():
    """precision bf16 on a CPU: the step's forward runs under bfloat16 autocast."""
    trainer = tiny_trainer(1.0, precision="bf16")
    dtypes = []
    trainer.model.head.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    trainer.train_step(trainer.plan.batch(0))
    assert dtypes == [torch.bfloat16]
