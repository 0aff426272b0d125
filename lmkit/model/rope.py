"""Rotary position embedding: the cosine/sine tables and the rotation of queries and keys.

Training's one-GEMM q/k/v path, with its own RoPE backward, lives in ``lmkit.kernels.qkv``.
"""

from __future__ import annotations

import torch


def precompute_rope(
    head_dim: int,
    context_length: int,
    theta: float = 10000.0,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables for rotary position embedding, in fp32.

    Frequency i (of head_dim/2) rotates at ``theta ** (-2i / head_dim)`` radians per position.

    Args:
        head_dim: width of one attention head (even).
        context_length: number of positions to tabulate.
        theta: base period.
        device: where to build the tables.

    Returns:
        ``(cos, sin)``, each of shape (context_length, head_dim // 2), dtype float32.
    """
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    even = torch.arange(0, head_dim, 2, device=device, dtype=torch.float32)  # (hd/2,)
    inv_freq = theta ** (-even / head_dim)  # (hd/2,)
    pos = torch.arange(context_length, device=device, dtype=torch.float32)
    angles = torch.outer(pos, inv_freq)  # (context_length, hd/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate query or key vectors by their positions' angles.

    Pairing convention ("rotate_half", as in Meta's HF Llama export): dimension j is paired
    with dimension j + hd/2, not with its neighbour j + 1. Weights exported to a HuggingFace
    ``LlamaForCausalLM`` therefore need no row permutation of q_proj / k_proj, and weights from
    one load directly. (The original Meta checkpoints pair interleaved neighbours instead.)

    Args:
        x: (..., T, hd) queries or keys, e.g. (B, H, T, hd); or (B, T, H, hd) with cos and sin
            given as (T, 1, hd/2).
        cos: (T, hd/2) table rows for the T positions of ``x`` (``precompute_rope`` output,
            indexed by position), broadcastable against ``x[..., :hd/2]``.
        sin: likewise.

    Returns:
        The rotated tensor, same shape and dtype as ``x``.
    """
    # In fp32 so that large angles (late positions) keep their precision under bf16.
    xf = x.float()
    half = xf.shape[-1] // 2
    x1, x2 = xf[..., :half], xf[..., half:]  # (..., T, hd/2) each
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)  # (..., T, hd)
    return out.type_as(x)
