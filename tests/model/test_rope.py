"""RoPE (lmkit/model/rope.py): the tables and rotation against their properties and HF's
formulation. Training's stacked q/k/v path with its RoPE backward: tests/kernels/test_qkv.py."""

from __future__ import annotations

import pytest
import torch

from lmkit.model import apply_rope, precompute_rope


def test_rope_tables_shape_and_dtype() -> None:
    cos, sin = precompute_rope(head_dim=8, context_length=5, theta=10000.0)
    assert cos.shape == sin.shape == (5, 4)
    assert cos.dtype == torch.float32
    torch.testing.assert_close(cos[0], torch.ones(4))  # position 0 is not rotated
    torch.testing.assert_close(cos**2 + sin**2, torch.ones(5, 4))


def test_rope_rejects_odd_head_dim() -> None:
    with pytest.raises(ValueError):
        precompute_rope(head_dim=7, context_length=4)


def test_rope_preserves_norm() -> None:
    cos, sin = precompute_rope(8, 6)
    x = torch.randn(1, 2, 6, 8)
    torch.testing.assert_close(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1))


def test_rope_pairs_halves_like_hf_rotate_half() -> None:
    """Dimension j pairs with j + hd/2 (HF Llama), written here in HF's own formulation."""
    hd, T = 8, 5
    cos, sin = precompute_rope(hd, T)
    x = torch.randn(1, 1, T, hd)
    cos_full, sin_full = torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)  # (T, hd)
    rotate_half = torch.cat((-x[..., hd // 2 :], x[..., : hd // 2]), dim=-1)
    torch.testing.assert_close(apply_rope(x, cos, sin), x * cos_full + rotate_half * sin_full)


def test_rope_scores_depend_only_on_relative_position() -> None:
    """q rotated at m dotted with k rotated at n depends only on m - n."""
    torch.manual_seed(0)
    hd, T = 16, 32
    cos, sin = precompute_rope(hd, T)
    q, k = torch.randn(hd), torch.randn(hd)

    def score(m: int, n: int) -> torch.Tensor:
        qm = apply_rope(q.view(1, 1, 1, hd), cos[m : m + 1], sin[m : m + 1])
        kn = apply_rope(k.view(1, 1, 1, hd), cos[n : n + 1], sin[n : n + 1])
        return (qm * kn).sum()

    for offset in (0, 1, 5):
        ref = score(offset, 0)
        for shift in (3, 10, 20):
            torch.testing.assert_close(score(offset + shift, shift), ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(score(1, 0), score(2, 0))  # yet it does depend on the offset
