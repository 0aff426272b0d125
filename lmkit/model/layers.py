"""Building blocks of the transformer: RMSNorm, rotary position embedding, SwiGLU, attention.

Notation used in shape comments:
    B  batch size
    T  sequence length of the current call (the whole sequence in training, 1 when decoding)
    D  d_model, width of the residual stream
    H  num_heads
    hd head_dim = D // H
    F  d_ff, SwiGLU hidden width
    S  max_len of the KV cache (keys attended to when decoding)

Each layer works alone given its weights (e.g. ``layer.load_state_dict(...)``); the only thing
the transformer supplies is the RoPE table rows for the current positions. These are the plain
torch versions; training and generation may swap in faster equivalents from ``lmkit.kernels``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.model.kv_cache import KVCache
from lmkit.model.rope import apply_rope


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain (no bias, no mean subtraction).

    Matches ``torch.nn.RMSNorm(d, eps)`` numerically; written out because that module only
    exists from torch 2.4 and does not upcast low-precision inputs.
    """

    def __init__(self, d: int, eps: float = 1e-5) -> None:
        """Args:
        d: size of the last dimension being normalised.
        eps: added to the mean square so an all-zero vector does not divide by zero.
        """
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the last dimension of ``x`` (any leading shape); returns x's dtype."""
        # In fp32: the mean of squares of bf16 activations loses too much precision.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).type_as(x)


class Linear(nn.Linear):
    """``nn.Linear`` without a bias: every projection of the model is bias-free."""

    def __init__(self, in_features: int, out_features: int) -> None:
        """Args:
        in_features: input width.
        out_features: output width.
        """
        super().__init__(in_features, out_features, bias=False)


class SwiGLU(nn.Module):
    """Gated feed-forward: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        """Args:
        d_model: input and output width D.
        d_ff: hidden width F.
        """
        super().__init__()
        self.w1 = Linear(d_model, d_ff)  # gate
        self.w3 = Linear(d_model, d_ff)  # value
        self.w2 = Linear(d_ff, d_model)  # back to the residual stream

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D)."""
        gate, value = self.w1(x), self.w3(x)  # (..., F) each
        return self.w2(F.silu(gate) * value)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with RoPE on queries and keys.

    Separate q/k/v/o projections (bias-free) whose output rows are grouped by head: rows
    ``h*hd:(h+1)*hd`` of ``q_proj.weight`` belong to head h, the layout HF Llama uses.

    Without a KV cache the call attends within ``x`` only (training, or a plain forward).
    With ``kv_cache`` set (see ``TransformerLM.setup_cache``) the new keys and values are
    written at ``input_pos`` and the queries attend over the whole cache through ``mask``.
    """

    def __init__(self, d_model: int, num_heads: int) -> None:
        """Args:
        d_model: width D; must be divisible by num_heads.
        num_heads: number of heads H.
        """
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide d_model ({d_model})")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.q_proj = Linear(d_model, d_model)
        self.k_proj = Linear(d_model, d_model)
        self.v_proj = Linear(d_model, d_model)
        self.o_proj = Linear(d_model, d_model)
        self.kv_cache: KVCache | None = None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        input_pos: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend.

        Args:
            x: (B, T, D) input.
            cos: (T, hd/2) RoPE rows for the positions of x.
            sin: (T, hd/2), likewise.
            input_pos: (T,) absolute positions of x; needed only with a KV cache.
            mask: (T, S) mask over the cache slots, bool or additive (see
                ``TransformerLM.cache_mask``); needed only with a KV cache.

        Returns:
            (B, T, D) output.
        """
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # (B, T, D) each
        return self.attend(q, k, v, cos, sin, input_pos, mask)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        input_pos: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Everything after the q/k/v projections: RoPE, the cache, attention, the output projection.

        Args:
            q, k, v: (B, T, D) projections of the input, heads concatenated.
            cos, sin, input_pos, mask: as for ``forward``.

        Returns:
            (B, T, D) output.
        """
        B, T, D = q.shape
        H, hd = self.num_heads, self.head_dim
        q, k, v = (t.view(B, T, H, hd) for t in (q, k, v))  # (B, T, H, hd) each
        if self.kv_cache is None:
            # Rotated before the head axis moves forward: attention then returns its output in
            # (B, T, H, hd) order and the reshape below is a view. Rotated as (B, H, T, hd), q
            # and k came out contiguous in that order, which cost a copy of the output and one
            # more (B, T, D) tensor saved per layer for backward.
            cos, sin = cos[:, None], sin[:, None]  # (T, 1, hd/2): broadcast over heads
            q = apply_rope(q, cos, sin).transpose(1, 2)  # (B, H, T, hd)
            k = apply_rope(k, cos, sin).transpose(1, 2)  # (B, H, T, hd)
            y = F.scaled_dot_product_attention(q, k, v.transpose(1, 2), is_causal=True)  # (B, H, T, hd)
        else:
            # With a cache, rotated in (B, H, T, hd) order: the memory-efficient kernel (fp32)
            # rejected the strides Inductor gave a batch-1, one-token query rotated the other way.
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd) each
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            if input_pos is None or mask is None:
                raise ValueError("attention with a KV cache needs input_pos and mask")
            k, v = self.kv_cache.update(input_pos, k, v)  # (B, H, S, hd) each
            # The cache may be kept in another dtype than the activations (e.g. under autocast).
            k, v = k.to(q.dtype), v.to(q.dtype)
            mask = mask if mask.dtype == torch.bool else mask.to(q.dtype)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, hd)
        y = y.transpose(1, 2).reshape(B, T, D)  # (B, T, D): heads concatenated again
        return self.o_proj(y)
