"""lmkit's AdamW (one Triton launch per parameter group) against torch's AdamW.

On CPU the kernel runs under Triton's interpreter (in a subprocess); the ``gpu`` test compares it
with torch's fused AdamW at GPT-2-small-like sizes.
"""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
from triton_interpreter import requires_triton, run_interpreted

from lmkit.kernels import adamw as adamw_kernel
from lmkit.kernels.adamw import AdamW
from lmkit.training.optim import build_optimizer, clip_gradients, param_groups

# Launch parameters the helpers give lmkit's AdamW (the interpreted run shrinks the block).
LAUNCH: dict = {}


def _model(device: str, sizes=(8, 300, 7)) -> torch.nn.Module:
    torch.manual_seed(0)
    d_in, d_hidden, d_out = sizes
    return torch.nn.Sequential(
        torch.nn.Linear(d_in, d_hidden), torch.nn.RMSNorm(d_hidden), torch.nn.Linear(d_hidden, d_out, bias=False)
    ).to(device)


def _train(model, opt, device: str, steps: range, ref: bool, skip_grad_at: int | None = None) -> None:
    """``steps`` of a toy regression with a changing LR and the gradient clipped to 0.5; at step
    ``skip_grad_at`` the last weight gets no gradient (so its step count falls behind)."""
    for step in steps:
        g = torch.Generator().manual_seed(step)
        x = (torch.randn(16, model[0].in_features, generator=g) * 10).to(device)
        model(x).pow(2).mean().backward()
        if step == skip_grad_at:
            model[2].weight.grad = None
        for group in opt.param_groups:
            group["lr"] = 1e-2 / (1 + step)
        if ref:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        else:
            clip_gradients(opt, list(model.parameters()), 0.5)
        opt.step()
        opt.zero_grad(set_to_none=True)


def kernel_step_matches_torch(device: str, fused_ref: bool = False) -> None:
    """Several steps (clip folded in, LR changing, one parameter skipping a step, a checkpoint
    moved between the two optimizers) leave the same parameters as torch's AdamW."""
    hyper = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    ours, ref = _model(device), _model(device)
    opt = AdamW(param_groups(ours, 0.1), **hyper, **LAUNCH)
    opt_ref = torch.optim.AdamW(param_groups(ref, 0.1), **hyper, fused=fused_ref, foreach=False if not fused_ref else None)
    _train(ours, opt, device, range(3), ref=False)
    _train(ref, opt_ref, device, range(3), ref=True)
    assert opt._plans, "the kernel path did not run"
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # Resume each from the other's state dict: the two formats are one.
    state, state_ref = opt.state_dict(), opt_ref.state_dict()
    opt, opt_ref = AdamW(param_groups(ours, 0.1), **hyper, **LAUNCH), torch.optim.AdamW(param_groups(ref, 0.1), **hyper)
    opt.load_state_dict(state_ref)
    opt_ref.load_state_dict(state)
    # Its fallback step is torch's unfused one, even after loading a fused optimizer's groups.
    assert not any(group["fused"] for group in opt.param_groups)
    _train(ours, opt, device, range(3, 6), ref=False, skip_grad_at=4)
    _train(ref, opt_ref, device, range(3, 6), ref=True, skip_grad_at=4)
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert [float(s["step"]) for s in opt.state.values()] == [float(s["step"]) for s in opt_ref.state.values()]


def keeps_no_gradient_alive(device: str) -> None:
    """After ``step`` and ``zero_grad`` nothing of the optimizer holds a gradient: under CUDA
    graphs the gradients are graph outputs, which the next replay overwrites."""
    model = _model(device)
    opt = AdamW(param_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, **LAUNCH)
    for _ in range(2):
        model(torch.randn(4, 8, device=device)).sum().backward()
        grads = [weakref.ref(p.grad) for p in model.parameters()]
        opt.step()
        assert opt._plans, "the kernel path did not run"
        opt.zero_grad(set_to_none=True)
        gc.collect()
        assert all(g() is None for g in grads)


def resumes_through_distributed_checkpoint(device: str) -> None:
    """The trainer saves and loads optimizer state through torch.distributed.checkpoint's
    helpers (keyed by parameter name); resumed from them, training continues exactly."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict

    hyper = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    model = _model(device)
    opt = AdamW(param_groups(model, 0.1), **hyper, **LAUNCH)
    _train(model, opt, device, range(2), ref=False)
    options = StateDictOptions(full_state_dict=True)
    # A copy, as a checkpoint file gives: the state dict holds the optimizer's own moment tensors.
    state = copy.deepcopy(get_optimizer_state_dict(model, opt, options=options))
    resumed = copy.deepcopy(model)
    opt_resumed = AdamW(param_groups(resumed, 0.1), **hyper, **LAUNCH)
    set_optimizer_state_dict(resumed, opt_resumed, state, options=options)
    _train(model, opt, device, range(2, 4), ref=False)
    _train(resumed, opt_resumed, device, range(2, 4), ref=False)
    for a, b in zip(model.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


_INTERPRETED_CHECKS = """
from tests.kernels import test_adamw
from tests.kernels.test_adamw import keeps_no_gradient_alive, kernel_step_matches_torch, resumes_through_distributed_checkpoint
test_adamw.LAUNCH["block"] = 256  # several programs per tensor, the last one masked
kernel_step_matches_torch("cpu")
kernel_step_matches_torch("cpu", fused_ref=True)
keeps_no_gradient_alive("cpu")
resumes_through_distributed_checkpoint("cpu")
print("ok")
"""


@requires_triton
def test_kernel_under_triton_interpreter_matches_torch_adamw() -> None:
    run_interpreted(_INTERPRETED_CHECKS)


def test_build_optimizer_picks_the_kernel_only_where_it_runs() -> None:
    model = _model("cpu")
    assert type(build_optimizer(model, 1e-3, 0.1, (0.9, 0.95), 1e-8, "cpu")) is torch.optim.AdamW
    assert not adamw_kernel.supported(list(model.parameters()))  # CPU tensors
    assert not adamw_kernel.supported([torch.zeros(3, dtype=torch.bfloat16, device="meta")])


def test_supported_needs_aligned_plain_fp32_tensors(monkeypatch) -> None:
    """What would break its 16-byte vectors: a size not a multiple of 4, an unaligned or strided view."""
    monkeypatch.setattr(adamw_kernel, "triton_device", lambda device: True)  # as under the interpreter
    model = _model("cpu")
    assert adamw_kernel.supported(list(model.parameters()))
    base = torch.zeros(64)
    assert not adamw_kernel.supported([torch.zeros(6)])
    assert not adamw_kernel.supported([base[1:9]])
    assert not adamw_kernel.supported([base.view(8, 8)[:, :4]])
    assert adamw_kernel.supported([base[4:12]])


@pytest.mark.gpu
def test_kernel_matches_fused_adamw_cuda(monkeypatch) -> None:
    # The toy models' fp32 matmuls must be fp32: under TF32 (which any CUDA training or
    # generation in this process turns on) the two runs' last-bit differences grow past the
    # tolerance within three steps.
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    kernel_step_matches_torch("cuda", fused_ref=True)
    keeps_no_gradient_alive("cuda")
    resumes_through_distributed_checkpoint("cuda")
    # GPT-2-small-like tensors: many programs, the tables' int64 offsets.
    sizes = [(50304, 768), (768, 768), (2048, 768), (768,)]
    params = [torch.randn(s, device="cuda") for s in sizes]
    ref = [p.clone() for p in params]
    opt = AdamW([{"params": params, "weight_decay": 0.1}], lr=6e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    opt_ref = torch.optim.AdamW([{"params": ref, "weight_decay": 0.1}], lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
    for step in range(3):
        for p, r in zip(params, ref):
            p.grad = torch.randn_like(p)
            r.grad = p.grad.clone()
        opt.step()
        opt_ref.step()
    for p, r in zip(params, ref):
        torch.testing.assert_close(p, r, rtol=1e-5, atol=1e-6)
