"""AdamW setup and gradient clipping (the fused-kernel shortcut must equal plain clipping)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lmkit.training.optim import build_optimizer, clip_gradients, param_groups


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.RMSNorm(16), torch.nn.Linear(16, 4))


def test_param_groups_decay_matrices_only() -> None:
    decay, no_decay = param_groups(_model(), 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(_model().parameters()))


@pytest.mark.parametrize("max_norm", [0.5, 1e6, math.inf])
def test_clip_into_fused_adamw_equals_clip_grad_norm(max_norm: float) -> None:
    """Folded into fused AdamW (CPU has the fused kernel too) or applied to the gradients, the
    parameters after each step equal torch's clip_grad_norm_ + plain AdamW's, and the returned
    norm is the unclipped one."""
    ours, ref = _model(), _model()
    opt_fused = torch.optim.AdamW(param_groups(ours, 0.1), lr=1e-2, fused=True)
    opt_ref = torch.optim.AdamW(param_groups(ref, 0.1), lr=1e-2)
    for step in range(4):
        x = torch.randn(5, 8) * 10
        for model in (ours, ref):
            model(x).pow(2).sum().backward()
        norm = clip_gradients(opt_fused, list(ours.parameters()), max_norm)
        ref_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm)
        torch.testing.assert_close(norm, ref_norm)
        opt_fused.step()
        opt_ref.step()
        for opt in (opt_fused, opt_ref):
            opt.zero_grad(set_to_none=True)
        for a, b in zip(ours.parameters(), ref.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"step {step}")


def test_clip_without_fused_kernel_scales_the_gradients() -> None:
    model = _model()
    opt = build_optimizer(model, 1e-2, 0.1, (0.9, 0.95), 1e-8, "cpu")  # foreach, not fused
    model(torch.randn(5, 8) * 10).pow(2).sum().backward()
    before = copy.deepcopy([p.grad for p in model.parameters()])
    norm = clip_gradients(opt, list(model.parameters()), 0.5)
    assert float(norm) > 0.5 and getattr(opt, "grad_scale", None) is None
    after = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    torch.testing.assert_close(after, torch.tensor(0.5), rtol=1e-4, atol=0)
    for b, p in zip(before, model.parameters()):
        torch.testing.assert_close(p.grad, b * (0.5 / (float(norm) + 1e-6)))
    opt.step()  # a foreach AdamW refuses a grad_scale: none must be left set
