"""lmkit's model with q/k/v and w1/w3 held as one parameter each, for measuring only.

lmkit keeps separate q/k/v and gate/value projections (the layout HF Llama exports map one to
one). nanoGPT (``c_attn``) and litgpt (``qkv``) hold one stacked matrix instead, which makes the
forward one GEMM instead of three (two for w1/w3), and the backward one data-gradient GEMM
instead of three plus the adds that sum them. Concatenating lmkit's weights on every step
measured 4.7 % slower (NOTES.md, session 1); this asks whether stacked *parameters* are faster
before lmkit's checkpoint layout would change for them. Used by train_throughput.py's
``fusedproj`` variants.

Notation: B batch, T sequence, D d_model, H heads, hd head_dim, F d_ff.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.model import TransformerLM
from lmkit.model.layers import CausalSelfAttention, SwiGLU
from lmkit.model.rope import apply_rope


class StackedAttention(nn.Module):
    """``CausalSelfAttention`` (training path, no KV cache) over one (3D, D) q/k/v weight."""

    # What TransformerLM looks at for decoding (the cache): never set here.
    kv_cache = None

    def __init__(self, attn: CausalSelfAttention) -> None:
        super().__init__()
        self.num_heads, self.head_dim = attn.num_heads, attn.head_dim
        with torch.no_grad():  # the same initial function as the separate projections
            self.qkv = nn.Parameter(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
        self.o_proj = attn.o_proj

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, input_pos=None, mask=None) -> torch.Tensor:
        B, T, D = x.shape
        H, hd = self.num_heads, self.head_dim
        q, k, v = F.linear(x, self.qkv).view(B, T, 3, H, hd).unbind(2)  # (B, T, H, hd) each
        cos, sin = cos[:, None], sin[:, None]  # (T, 1, hd/2)
        q = apply_rope(q, cos, sin).transpose(1, 2)  # (B, H, T, hd)
        k = apply_rope(k, cos, sin).transpose(1, 2)  # (B, H, T, hd)
        y = F.scaled_dot_product_attention(q, k, v.transpose(1, 2), is_causal=True)  # (B, H, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, D))  # (B, T, D)


class StackedSwiGLU(nn.Module):
    """``SwiGLU`` over one (2F, D) gate/value weight."""

    def __init__(self, ffn: SwiGLU) -> None:
        super().__init__()
        with torch.no_grad():
            self.w13 = nn.Parameter(torch.cat([ffn.w1.weight, ffn.w3.weight]))
        self.w2 = ffn.w2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = F.linear(x, self.w13).chunk(2, dim=-1)  # (..., F) each
        return self.w2(F.silu(gate) * value)


def stack_projections(model: TransformerLM) -> TransformerLM:
    """Swap every block's attention and SwiGLU for the stacked versions, in place."""
    for block in model.blocks:
        block.attn = StackedAttention(block.attn)
        block.ffn = StackedSwiGLU(block.ffn)
    return model
