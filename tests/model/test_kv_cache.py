"""KV cache: cached decoding reproduces the full forward pass at every position."""

from __future__ import annotations

import pytest
import torch

from lmkit.model import KVCache, ModelConfig, TransformerLM

TINY = dict(vocab_size=50, context_length=24, d_model=32, num_layers=2, num_heads=4, d_ff=48)


@pytest.fixture
def model() -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(ModelConfig(**TINY))


def test_update_writes_at_positions() -> None:
    cache = KVCache(batch_size=2, num_heads=3, max_len=6, head_dim=4)
    k, v = torch.randn(2, 3, 2, 4), torch.randn(2, 3, 2, 4)
    k_all, v_all = cache.update(torch.tensor([1, 2]), k, v)
    assert k_all.shape == v_all.shape == (2, 3, 6, 4)
    torch.testing.assert_close(k_all[:, :, 1:3], k)
    torch.testing.assert_close(v_all[:, :, 1:3], v)
    assert k_all[:, :, [0, 3, 4, 5]].abs().sum() == 0
    assert cache.state_dict() == {}  # scratch space, never checkpointed


@pytest.mark.parametrize("prefill_len", [1, 5])
def test_cached_decode_matches_full_forward(model: TransformerLM, prefill_len: int) -> None:
    idx = torch.randint(0, 50, (2, 20))
    full = model(idx)  # (B, T, V) without a cache
    model.setup_cache(batch_size=2, max_len=20)
    got = [model(idx[:, :prefill_len], torch.arange(prefill_len))]
    for pos in range(prefill_len, 20):
        got.append(model(idx[:, pos : pos + 1], torch.tensor([pos])))
    torch.testing.assert_close(torch.cat(got, dim=1), full, atol=1e-5, rtol=1e-5)


def test_bf16_cached_decode_uses_additive_mask_and_matches_full_forward(model: TransformerLM) -> None:
    # Half precision takes the additive (0 / -inf) mask form; fp32 the bool one.
    model = model.to(torch.bfloat16)
    model.setup_cache(batch_size=1, max_len=10)
    mask = model.cache_mask(torch.tensor([3]), torch.bfloat16)
    assert mask.dtype == torch.bfloat16 and mask[0, :4].eq(0).all() and mask[0, 4:].eq(float("-inf")).all()
    assert model.cache_mask(torch.tensor([3]), torch.float32).tolist() == [[True] * 4 + [False] * 6]
    idx = torch.randint(0, 50, (1, 10))
    got = [model(idx[:, :3], torch.arange(3))] + [model(idx[:, p : p + 1], torch.tensor([p])) for p in range(3, 10)]
    model.clear_cache()
    torch.testing.assert_close(torch.cat(got, dim=1).float(), model(idx).float(), atol=3e-2, rtol=3e-2)


def test_cached_chunks_match_full_forward(model: TransformerLM) -> None:
    idx = torch.randint(0, 50, (1, 12))
    full = model(idx)
    model.setup_cache(batch_size=1)  # max_len defaults to the context length (24)
    chunks = [model(idx[:, a:b], torch.arange(a, b)) for a, b in ((0, 4), (4, 9), (9, 12))]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-5, rtol=1e-5)


def test_cache_reuse_after_restart(model: TransformerLM) -> None:
    """A second prompt overwrites the first one's slots; leftovers beyond it are masked."""
    a, b = torch.randint(0, 50, (1, 10)), torch.randint(0, 50, (1, 6))
    expected = model(b)
    model.setup_cache(batch_size=1, max_len=10)
    model(a, torch.arange(10))
    torch.testing.assert_close(model(b, torch.arange(6)), expected, atol=1e-5, rtol=1e-5)


def test_setup_and_clear(model: TransformerLM) -> None:
    model.setup_cache(batch_size=3, max_len=8, dtype=torch.bfloat16)
    assert model.has_cache
    cache = model.blocks[1].attn.kv_cache
    assert cache.k.shape == (3, 4, 8, 8) and cache.k.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="input_pos"):
        model(torch.zeros(3, 2, dtype=torch.long))
    model.clear_cache()
    assert not model.has_cache
    assert model(torch.zeros(3, 2, dtype=torch.long)).shape == (3, 2, 50)


@pytest.mark.parametrize("max_len", [0, 25])
def test_setup_rejects_bad_max_len(model: TransformerLM, max_len: int) -> None:
    with pytest.raises(ValueError, match="max_len"):
        model.setup_cache(batch_size=1, max_len=max_len)
