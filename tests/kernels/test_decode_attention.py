"""The one-token decode attention kernel (lmkit/kernels/decode_attention.py) and its layer.

On CPU the kernel runs under Triton's interpreter (``TRITON_INTERPRET=1``, which must be set
before triton is imported, hence a subprocess); the GPU tests run the compiled kernel.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from triton_interpreter import requires_triton, run_interpreted

from lmkit.kernels import decode_attention
from lmkit.kernels.decode import DecodeAttention, apply_decode, remove_decode
from lmkit.model import ModelConfig, TransformerLM
from lmkit.model.rope import apply_rope, precompute_rope


def reference(qkv, cos, sin, k_cache, v_cache, pos):
    """RoPE, cache write and attention over slots 0..pos, the way the SDPA path does them."""
    B, _, three_d = qkv.shape
    _, H, _, hd = k_cache.shape
    D = three_d // 3
    q, k, v = (t.view(B, 1, H, hd).transpose(1, 2) for t in qkv.split(D, dim=-1))  # (B, H, 1, hd)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    k_cache.index_copy_(2, pos, k.to(k_cache.dtype))
    v_cache.index_copy_(2, pos, v.to(v_cache.dtype))
    p = int(pos)
    keys, values = k_cache[:, :, : p + 1].to(q.dtype), v_cache[:, :, : p + 1].to(q.dtype)
    y = F.scaled_dot_product_attention(q.float(), keys.float(), values.float())  # (B, H, 1, hd)
    return y.transpose(1, 2).reshape(B, 1, D).to(qkv.dtype)


# The kernel's split and loop block shrunk, so that short test caches span several splits.
SMALL_SPLIT, SMALL_BLOCK = 16, 8


def kernel_matches_reference(device: str, dtype: torch.dtype, cache_dtype: torch.dtype, atol: float) -> None:
    """The op against ``reference`` at positions around the splits' and blocks' edges, batch 2.

    The written key may differ from torch's by rounding: the kernel's RoPE uses fused
    multiply-adds, and Triton's interpreter rounds to bf16 by truncation (numpy has no bf16).
    """
    torch.manual_seed(0)
    B, H, hd = 2, 3, 16
    # (fp32: an FMA-sized difference; half: one rounding step, or that FMA difference near zero)
    cache_tol = dict(atol=1e-6, rtol=1e-6) if dtype == torch.float32 else dict(atol=1e-5, rtol=2**-7)
    split, S = SMALL_SPLIT, 3 * SMALL_SPLIT + 5  # four splits at the end
    cos_t, sin_t = precompute_rope(hd, S, device=device)
    op = decode_attention.decode_attention_op(SMALL_SPLIT, SMALL_BLOCK)
    for pos in (0, 1, split - 1, split, split + 1, 2 * split + 3, S - 1):
        k_cache = torch.randn(B, H, S, hd, device=device).to(cache_dtype)
        v_cache = torch.randn(B, H, S, hd, device=device).to(cache_dtype)
        arrivals = torch.zeros(B, H, dtype=torch.int32, device=device)
        k_ref, v_ref = k_cache.clone(), v_cache.clone()
        qkv = torch.randn(B, 1, 3 * H * hd, device=device).to(dtype)
        p = torch.tensor([pos], device=device)
        out = op(qkv, cos_t[p], sin_t[p], k_cache, v_cache, arrivals, p)
        expected = reference(qkv, cos_t[p], sin_t[p], k_ref, v_ref, p)
        assert out.shape == (B, 1, H * hd) and out.dtype == dtype
        torch.testing.assert_close(out.float(), expected.float(), atol=atol, rtol=0, msg=lambda m: f"output at pos {pos}: {m}")
        # The new key and value are written at pos; every other slot is left as it was.
        torch.testing.assert_close(k_cache, k_ref, **cache_tol, msg=lambda m: f"keys at pos {pos}: {m}")
        torch.testing.assert_close(v_cache, v_ref, atol=0, rtol=0, msg=lambda m: f"values at pos {pos}: {m}")
        assert not arrivals.any(), "the kernel must leave its counters at zero"


def cached_decoding_matches_forward(device: str, dtype: torch.dtype, atol: float, compile: bool = False) -> None:
    """Prefill (SDPA path), then one token at a time through the kernel: same logits as a full pass."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, context_length=36, d_model=32, num_layers=1, num_heads=2, d_ff=64)
    model = TransformerLM(cfg).to(device=device, dtype=dtype).eval()
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.context_length), device=device)
    with torch.no_grad():
        full = model(idx)  # (B, T, V)
        model.setup_cache(batch_size=2)
        apply_decode(model, stacked_weights=True, kernel=True)
        assert isinstance(model.blocks[0].attn, DecodeAttention) and model.blocks[0].attn.attention_op is not None
        # 16-slot splits: the decoded tokens cross one split edge
        for block in model.blocks:
            block.attn.attention_op = decode_attention.decode_attention_op(SMALL_SPLIT, SMALL_BLOCK)
        step = torch.compile(model, fullgraph=True) if compile else model
        prompt = 29
        logits = [model(idx[:, :prompt], torch.arange(prompt, device=device))]
        for t in range(prompt, cfg.context_length):
            logits.append(step(idx[:, t : t + 1], torch.tensor([t], device=device)))
    torch.testing.assert_close(torch.cat(logits, dim=1).float(), full.float(), atol=atol, rtol=0)


_INTERPRETED_CHECKS = """
import torch
from tests.kernels.test_decode_attention import kernel_matches_reference, cached_decoding_matches_forward
kernel_matches_reference("cpu", torch.float32, torch.float32, atol=1e-5)
kernel_matches_reference("cpu", torch.bfloat16, torch.float32, atol=2e-2)  # autocast: bf16 activations, fp32 cache
cached_decoding_matches_forward("cpu", torch.float32, atol=1e-4)
print("ok")
"""


@requires_triton
def test_kernel_under_triton_interpreter_matches_sdpa_path():
    run_interpreted(_INTERPRETED_CHECKS)


def test_supported_only_on_cuda_with_power_of_two_heads():
    assert not decode_attention.supported(64, torch.device("cpu"))
    assert not decode_attention.supported(48, torch.device("cuda"))  # hd/2 must be a power of two
    assert not decode_attention.supported(8, torch.device("cuda"))


def test_cpu_cache_uses_the_sdpa_path():
    model = TransformerLM(ModelConfig(vocab_size=32, context_length=8, d_model=32, num_layers=1, num_heads=2, d_ff=64))
    model.setup_cache(batch_size=1)
    apply_decode(model, stacked_weights=True, kernel=True)
    assert model.blocks[0].attn.attention_op is None
    remove_decode(model)
    assert type(model.blocks[0].attn).__name__ == "CausalSelfAttention"


gpu = pytest.mark.gpu


@gpu
@pytest.mark.parametrize(
    "dtype, cache_dtype, atol",
    [(torch.float32, torch.float32, 1e-5), (torch.bfloat16, torch.bfloat16, 2e-2), (torch.bfloat16, torch.float32, 2e-2)],
)
def test_kernel_matches_reference_on_cuda(dtype, cache_dtype, atol):
    kernel_matches_reference("cuda", dtype, cache_dtype, atol)


@gpu
@pytest.mark.parametrize("compile", [False, True])
def test_cached_decoding_through_kernel_matches_forward_on_cuda(compile):
    cached_decoding_matches_forward("cuda", torch.float32, atol=1e-4, compile=compile)
    cached_decoding_matches_forward("cuda", torch.bfloat16, atol=6e-2, compile=compile)
