"""The kernel plan: settings to plan, resolution against the runtime, and every fast path on
against every one off (loss, gradients and an optimizer step of the same tiny model)."""

from __future__ import annotations

import copy
from dataclasses import asdict, fields

import pytest
import torch
from triton_interpreter import requires_triton, run_interpreted

from lmkit.kernels import KernelPlan, apply_training
from lmkit.kernels.adamw import AdamW
from lmkit.kernels.linear import Fp32GradLinear
from lmkit.kernels.qkv import StackedQKVAttention
from lmkit.model import ModelConfig, TransformerLM
from lmkit.settings import KernelSettings, Settings
from lmkit.training.loss import lm_loss
from lmkit.training.optim import param_groups

ALL_OFF = KernelPlan(**{f.name: False for f in fields(KernelPlan) if f.type in ("bool", bool)})


def test_plan_mirrors_the_settings_section() -> None:
    """Same fields, same defaults: a plan from default settings is the default plan."""
    assert [f.name for f in fields(KernelPlan)] == list(KernelSettings.model_fields)
    assert KernelPlan.from_settings(Settings().kernels) == KernelPlan()
    assert KernelPlan.from_settings(None) == KernelPlan()  # a checkpoint from before the section
    flipped = KernelSettings(ce_kernel=False, decode_steps_per_replay=2)
    assert KernelPlan.from_settings(flipped) == KernelPlan(ce_kernel=False, decode_steps_per_replay=2)


def test_for_training_turns_off_what_cannot_apply() -> None:
    cpu = torch.device("cpu")
    fp32 = KernelPlan().for_training(cpu, torch.float32)
    assert not (fp32.fp32_weight_grad or fp32.stacked_qkv or fp32.ce_kernel or fp32.adamw_kernel)
    bf16 = KernelPlan().for_training(cpu, torch.bfloat16)
    assert bf16.fp32_weight_grad and bf16.stacked_qkv and not bf16.ce_kernel and not bf16.adamw_kernel
    # stacked q/k/v is the fp32-gradient GEMM over stacked weights: without it, off too
    assert not KernelPlan(fp32_weight_grad=False).for_training(cpu, torch.bfloat16).stacked_qkv
    assert "stacked_qkv" in bf16.describe() and "none" in fp32.describe()
    # the decode fields are generation's, left as they were
    assert asdict(bf16)["decode_steps_per_replay"] == 4


def test_apply_training_keeps_parameters_and_state_dict() -> None:
    model = TransformerLM(ModelConfig(vocab_size=64, context_length=16, d_model=32, num_layers=2, num_heads=4, d_ff=64))
    names, params = list(model.state_dict()), list(model.parameters())
    apply_training(model, KernelPlan().for_training(torch.device("cpu"), torch.bfloat16), torch.bfloat16)
    assert isinstance(model.blocks[0].attn, StackedQKVAttention) and isinstance(model.lm_head, Fp32GradLinear)
    assert list(model.state_dict()) == names and all(a is b for a, b in zip(model.parameters(), params))


def all_paths_match(device: str, expect_kernels: bool) -> None:
    """A bf16-autocast training step of a tiny model with every fast path (resolved for
    ``device``) against every path off: loss, every gradient, and the weights after AdamW."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=96, context_length=16, d_model=64, num_layers=2, num_heads=4, d_ff=96)
    plain = TransformerLM(cfg).to(device)
    fast = copy.deepcopy(plain)
    plan = KernelPlan().for_training(torch.device(device), torch.bfloat16)
    assert plan.fp32_weight_grad and plan.stacked_qkv
    assert plan.ce_kernel == plan.adamw_kernel == expect_kernels
    apply_training(fast, plan, torch.bfloat16)
    x = torch.randint(0, cfg.vocab_size, (2, 16), device=device)
    y = torch.randint(0, cfg.vocab_size, (2, 16), device=device)
    losses = []
    for model, p in ((plain, ALL_OFF), (fast, plan)):
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            loss = lm_loss(model, x, y, fused=True, chunk_rows=16, compute_dtype=torch.bfloat16, ce_kernel=p.ce_kernel)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-3, atol=1e-3)
    for (name, a), b in zip(plain.named_parameters(), fast.parameters()):
        assert b.grad.dtype == torch.float32
        # bf16 operands either way; the fast paths round the weight gradients once less (and
        # the interpreter truncates to bf16 where CUDA rounds): agreement to a bf16 step or so
        scale = float(a.grad.abs().max())
        torch.testing.assert_close(b.grad, a.grad, rtol=3e-2, atol=1e-2 * scale, msg=lambda m: f"{name}: {m}")
        b.grad = a.grad.clone()  # the same gradients into both optimizers
    hyper = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    opt_plain = torch.optim.AdamW(param_groups(plain, 0.1), **hyper)
    opt_fast = AdamW(param_groups(fast, 0.1), **hyper) if plan.adamw_kernel else torch.optim.AdamW(param_groups(fast, 0.1), **hyper)
    opt_plain.step()
    opt_fast.step()
    if plan.adamw_kernel:
        assert opt_fast._plans, "the AdamW kernel did not run"
    for a, b in zip(plain.parameters(), fast.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_every_fast_path_on_and_off_match_on_cpu() -> None:
    """On CPU without the interpreter the Triton paths resolve off; the torch fast paths run."""
    all_paths_match("cpu", expect_kernels=False)


_INTERPRETED_CHECKS = """
from tests.kernels.test_plan import all_paths_match
all_paths_match("cpu", expect_kernels=True)
print("ok")
"""


@requires_triton
def test_every_fast_path_on_and_off_match_under_triton_interpreter() -> None:
    """Every Triton path too (the RoPE backward, the CE chunk, AdamW), run by the interpreter."""
    run_interpreted(_INTERPRETED_CHECKS)


@pytest.mark.gpu
def test_every_fast_path_on_and_off_match_on_cuda() -> None:
    all_paths_match("cuda", expect_kernels=True)


@pytest.mark.parametrize(("flip", "stacked", "fp32_grad"), [({}, True, True), ({"stacked_qkv": False}, False, True),
                                                            ({"fp32_weight_grad": False}, False, False)])
def test_trainer_applies_the_resolved_plan(tiny_overrides, flip, stacked, fp32_grad) -> None:
    """The Trainer resolves the kernels settings once and swaps in exactly the paths they name."""
    from lmkit.api import resolve_settings
    from lmkit.training.trainer import Trainer

    trainer = Trainer(resolve_settings(overrides=dict(tiny_overrides, dtype="bfloat16", **flip), environ={}))
    assert trainer.kernels.stacked_qkv is stacked and trainer.kernels.fp32_weight_grad is fp32_grad
    assert isinstance(trainer.model.blocks[0].attn, StackedQKVAttention) is stacked
    assert isinstance(trainer.model.lm_head, Fp32GradLinear) is fp32_grad
    assert not (trainer.kernels.ce_kernel or trainer.kernels.adamw_kernel)  # CPU: no Triton device
