"""The fused LM-head + CE under the conditions training uses: bf16 autocast on CUDA, torch.compile.

The CUDA tests are behind the ``gpu`` marker (run them on the device machine with ``-m gpu``);
the last test checks on CPU that compiling the fused loss (``aot_eager``: dynamo + AOTAutograd,
no code generation, so it takes seconds) computes exactly what eager does, with the chunk loop
left out of the graph.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch

from lmkit.model import ModelConfig, TransformerLM
from lmkit.training.loss import lm_loss

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

# Vocabulary larger than one chunk's rows and a row count no chunk size divides: every chunk
# boundary case the trainer can hit (last chunk short, several chunks) shows up.
SHAPE = dict(vocab_size=1000, context_length=64, d_model=64, num_layers=2, num_heads=4, d_ff=160)
BATCH, CHUNK = 3, 50  # N = 192 rows -> chunks of 50, 50, 50, 42


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` in fp64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def loss_and_grads(model: TransformerLM, loss_fn, x: torch.Tensor, y: torch.Tensor, autocast: bool):
    """Loss and a {name: grad} dict from one forward/backward."""
    model.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        loss = loss_fn(x, y)
    loss.backward()
    return loss.detach().float(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def setup(device: str, seed: int) -> tuple[TransformerLM, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = TransformerLM(ModelConfig(**SHAPE)).to(device)
    # Fresh random data each seed; y is not x shifted, so no shortcut through the data.
    x = torch.randint(0, SHAPE["vocab_size"], (BATCH, SHAPE["context_length"]), device=device)
    y = torch.randint(0, SHAPE["vocab_size"], (BATCH, SHAPE["context_length"]), device=device)
    return model, x, y


def assert_close_grads(got: dict, ref: dict, tol: float) -> None:
    for name, g in ref.items():
        assert torch.isfinite(got[name]).all(), name
        assert rel(got[name], g) < tol, f"{name}: relative error {rel(got[name], g):.2e} >= {tol}"


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("seed", [0, 1])
def test_fused_equals_plain_under_bf16_autocast_cuda(seed: int) -> None:
    model, x, y = setup("cuda", seed)
    ref_loss, ref_grads = loss_and_grads(model, partial(lm_loss, model, fused=False), x, y, autocast=False)  # fp32
    plain_loss, plain_grads = loss_and_grads(model, partial(lm_loss, model, fused=False), x, y, autocast=True)
    fused_loss, fused_grads = loss_and_grads(model, partial(lm_loss, model, chunk_rows=CHUNK), x, y, autocast=True)
    # bf16 operands: both paths within bf16 rounding of fp32 and of each other (METHOD: 1e-3..1e-2).
    assert abs(fused_loss - ref_loss) / ref_loss < 5e-3
    assert abs(fused_loss - plain_loss) / plain_loss < 5e-3
    assert_close_grads(fused_grads, ref_grads, 3e-2)
    assert_close_grads(fused_grads, plain_grads, 3e-2)
    assert_close_grads(plain_grads, ref_grads, 3e-2)  # the yardstick itself is sane


@pytest.mark.gpu
@requires_cuda
def test_fused_honours_the_upstream_gradient_cuda() -> None:
    """Backward scales the gradients stored in forward by the upstream gradient (bf16 grad_h
    and fp32 grad_w, on CUDA): exactly, for a power of two."""
    model, x, y = setup("cuda", 4)
    loss_fn = partial(lm_loss, model, chunk_rows=CHUNK)
    _, grads = loss_and_grads(model, loss_fn, x, y, autocast=True)
    _, doubled = loss_and_grads(model, lambda x, y: 2.0 * loss_fn(x, y), x, y, autocast=True)
    for name, g in grads.items():
        torch.testing.assert_close(doubled[name], 2 * g, rtol=0, atol=0, msg=name)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("fused", [True, False])
def test_compiled_lm_loss_equals_eager_cuda(fused: bool) -> None:
    torch._dynamo.reset()
    model, x, y = setup("cuda", 2)
    eager = partial(lm_loss, model, fused=fused, chunk_rows=CHUNK)
    e_loss, e_grads = loss_and_grads(model, eager, x, y, autocast=True)
    # As the trainer runs it: the model compiled, each fused chunk's softmax compiled on its own.
    compiled = torch.compile(partial(lm_loss, model, fused=fused, chunk_rows=CHUNK, compiled=True))
    c_loss, c_grads = loss_and_grads(model, compiled, x, y, autocast=True)
    # Inductor fuses and reorders the elementwise work, so bf16 roundings differ slightly.
    assert abs(c_loss - e_loss) / e_loss < 5e-3
    assert_close_grads(c_grads, e_grads, 3e-2)
    torch._dynamo.reset()


@pytest.mark.slow  # ~15 s on a 2-core box: dynamo tracing, not the arithmetic
def test_compiled_fused_loss_equals_eager_cpu() -> None:
    torch._dynamo.reset()
    model, x, y = setup("cpu", 3)
    eager = partial(lm_loss, model, fused=True, chunk_rows=CHUNK)
    e_loss, e_grads = loss_and_grads(model, eager, x, y, autocast=False)
    compiled = torch.compile(eager, backend="aot_eager")
    c_loss, c_grads = loss_and_grads(model, compiled, x, y, autocast=False)
    torch.testing.assert_close(c_loss, e_loss, rtol=1e-5, atol=1e-6)
    for name, g in e_grads.items():
        torch.testing.assert_close(c_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)
    # The chunk loop runs outside the model's graph (one break, no more): inlined into it,
    # Inductor kept several chunks' logits alive at once, which is the memory the chunks save.
    explained = torch._dynamo.explain(eager)(x, y)
    assert explained.graph_count == 1 and len(explained.break_reasons) == 1, explained.break_reasons
    torch._dynamo.reset()
