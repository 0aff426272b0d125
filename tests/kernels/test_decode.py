"""The decode layers (lmkit/kernels/decode.py) against the plain layers they replace."""

from __future__ import annotations

import pytest
import torch

from lmkit.kernels.decode import DecodeAttention, DecodeSwiGLU, apply_decode, remove_decode
from lmkit.model import CausalSelfAttention, ModelConfig, SwiGLU, TransformerLM

TINY = dict(vocab_size=50, context_length=24, d_model=32, num_layers=2, num_heads=4, d_ff=48)


@pytest.fixture
def model() -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(ModelConfig(**TINY))


def _uncached(model: TransformerLM) -> TransformerLM:
    clone = TransformerLM(model.config)
    clone.load_state_dict(model.state_dict())
    return clone


def test_stacked_decode_weights_match_and_follow_updates(model: TransformerLM) -> None:
    """The decode layers' stacked q/k/v and w1/w3 copies give the full forward's logits, and
    apply_decode brings them up to date, in place, after a weight change."""
    idx = torch.randint(0, 50, (2, 12))
    model.setup_cache(batch_size=2, max_len=12)
    apply_decode(model, stacked_weights=True, kernel=True)
    stacked = model.blocks[0].attn.qkv_weight
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        apply_decode(model, stacked_weights=True, kernel=True)
        assert model.blocks[0].attn.qkv_weight is stacked  # refreshed in place: a graph's pointers hold
        full = _uncached(model)(idx)  # plain forward of the same weights
        got = [model(idx[:, :3], torch.arange(3))]
        got += [model(idx[:, pos : pos + 1], torch.tensor([pos])) for pos in range(3, 12)]
    torch.testing.assert_close(torch.cat(got, dim=1), full, atol=1e-5, rtol=1e-5)


def test_apply_and_remove_keep_the_state_dict(model: TransformerLM) -> None:
    names = list(model.state_dict())
    model.setup_cache(batch_size=1, max_len=4)
    apply_decode(model, stacked_weights=True, kernel=False)
    assert isinstance(model.blocks[0].attn, DecodeAttention) and isinstance(model.blocks[1].ffn, DecodeSwiGLU)
    assert list(model.state_dict()) == names  # the stacked copies are non-persistent
    remove_decode(model, keep_buffers=True)
    assert type(model.blocks[0].attn) is CausalSelfAttention and type(model.blocks[0].ffn) is SwiGLU
    assert model.blocks[0].attn.qkv_weight.shape == (3 * 32, 32)  # kept for a graph's next replay
    remove_decode(model)
    assert not hasattr(model.blocks[0].attn, "qkv_weight") and not hasattr(model.blocks[0].ffn, "w13_weight")


def test_stacked_weights_off_leaves_the_plain_layers(model: TransformerLM) -> None:
    model.setup_cache(batch_size=1, max_len=4)
    apply_decode(model, stacked_weights=True, kernel=False)
    apply_decode(model, stacked_weights=False, kernel=True)
    assert type(model.blocks[0].attn) is CausalSelfAttention and not hasattr(model.blocks[0].attn, "qkv_weight")


def test_apply_needs_a_cache(model: TransformerLM) -> None:
    with pytest.raises(ValueError, match="setup_cache"):
        apply_decode(model, stacked_weights=True, kernel=True)


def test_dtype_change_casts_the_stacked_copies(model: TransformerLM) -> None:
    """They are buffers: .to() casts them with the weights (a graph keyed on addresses rebuilds)."""
    model.setup_cache(batch_size=1, max_len=4)
    apply_decode(model, stacked_weights=True, kernel=False)
    model.to(torch.float64)
    assert model.blocks[0].attn.qkv_weight.dtype == torch.float64
    assert model.blocks[0].ffn.w13_weight.dtype == torch.float64


def test_a_cleared_cache_falls_back_to_the_plain_attention(model: TransformerLM) -> None:
    """Gradients reach the real q/k/v once the cache is gone, even with the layer still swapped."""
    model.setup_cache(batch_size=1, max_len=4)
    apply_decode(model, stacked_weights=True, kernel=False)
    model.clear_cache()
    model.blocks[0].ffn.__class__ = SwiGLU  # the attention alone is under test here
    model.blocks[1].ffn.__class__ = SwiGLU
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    attn = model.blocks[0].attn
    assert all(p.grad is not None for p in (attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight))
