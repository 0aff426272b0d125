"""The fused chunked LM-head + cross-entropy equals the plain computation (loss and gradients)."""

import pytest
import torch

from lmkit.training.loss import cross_entropy_loss, fused_linear_cross_entropy


@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 1000])
def test_fused_matches_plain_fp32(chunk_rows):
    g = torch.Generator().manual_seed(0)
    B, T, D, V = 3, 11, 16, 37
    h = torch.randn(B, T, D, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(V, D, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, V, (B, T), generator=g)
    ref = cross_entropy_loss(h @ w.t(), y.clone()).to(torch.float64)
    # reference in float64 (cross_entropy_loss casts to fp32; redo it in fp64)
    ref = torch.nn.functional.cross_entropy((h @ w.t()).flatten(0, 1), y.flatten())
    gh_ref, gw_ref = torch.autograd.grad(ref, (h, w))
    loss = fused_linear_cross_entropy(h, w, y, chunk_rows=chunk_rows, compute_dtype=torch.float64)
    gh, gw = torch.autograd.grad(loss * 2.0, (h, w))  # a non-unit upstream gradient is honoured
    assert torch.allclose(loss.double(), ref, rtol=1e-6, atol=1e-6)
    assert torch.allclose(gh, 2 * gh_ref, rtol=1e-5, atol=1e-7)
    assert torch.allclose(gw, 2 * gw_ref, rtol=1e-5, atol=1e-7)


def test_fused_bf16_close_to_fp32():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(64, 32, generator=g, requires_grad=True)
    w = (0.1 * torch.randn(50, 32, generator=g)).requires_grad_()
    y = torch.randint(0, 50, (64,), generator=g)
    ref = torch.nn.functional.cross_entropy(h @ w.t(), y)
    gh_ref, gw_ref = torch.autograd.grad(ref, (h, w))
    loss = fused_linear_cross_entropy(h, w, y, chunk_rows=16, compute_dtype=torch.bfloat16)
    gh, gw = torch.autograd.grad(loss, (h, w))
    assert abs(loss.item() - ref.item()) < 2e-2
    assert (gh - gh_ref).norm() / gh_ref.norm() < 2e-2
    assert (gw - gw_ref).norm() / gw_ref.norm() < 2e-2


def test_no_grad_path_gives_same_loss():
    h, w = torch.randn(2, 5, 8), torch.randn(13, 8)
    y = torch.randint(0, 13, (2, 5))
    with torch.no_grad():
        a = fused_linear_cross_entropy(h, w, y, chunk_rows=3)
    assert torch.allclose(a, cross_entropy_loss(h @ w.t(), y), atol=1e-6)


def test_lm_loss_under_autocast_same_as_fp32_hidden_states():
    """lm_loss given the run's compute dtype hands the LM head bf16 hidden states (it multiplies
    in bf16 anyway): the loss and every gradient are exactly those of the fp32 hidden states
    multiplied in bf16. (The dtype is passed, not read from autocast: changed with #22.)"""
    from lmkit.model import ModelConfig, TransformerLM
    from lmkit.training.loss import lm_loss

    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(vocab_size=61, context_length=16, d_model=32, num_layers=2, num_heads=4, d_ff=64))
    x, y = torch.randint(0, 61, (3, 16)), torch.randint(0, 61, (3, 16))

    def run(loss_fn):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    loss, grads = run(lambda: lm_loss(model, x, y, chunk_rows=20, compute_dtype=torch.bfloat16))
    ref_loss, ref_grads = run(lambda: fused_linear_cross_entropy(model.hidden(x), model.lm_head.weight, y, 20,
                                                                 compute_dtype=torch.bfloat16))
    fp32_loss, _ = run(lambda: lm_loss(model, x, y, chunk_rows=20))  # no compute dtype: h's, fp32
    assert fp32_loss != loss
    assert model.hidden(x).dtype == torch.float32  # the reference really had fp32 states
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=0)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=0, atol=0)
