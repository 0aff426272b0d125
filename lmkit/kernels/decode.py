"""Decode layers: the generation setup's swap-ins for the model's attention and SwiGLU.

Notation: B batch, T positions in the call, D d_model, F d_ff, H heads, hd head_dim.

A decoded token is a few matrix-vector products per block, where a launch costs as much as the
work. ``DecodeAttention`` multiplies by one stacked (3D, D) copy of q/k/v instead of three
weights, and for one-token steps (with an ``attention_op``) runs RoPE, the cache write and attention
as one Triton kernel (decode_attention.py) instead of SDPA over the masked cache;
``DecodeSwiGLU`` multiplies by one (2F, D) copy of [w1; w3]. Their references are the plain
layers, which the tests compare them with.

``apply_decode`` turns a cached model's layers into these, in place (same Parameters, same state
dict); ``remove_decode`` turns them back. The stacked copies are non-persistent buffers, so
``.to()`` moves and casts them with the model; they have no autograd link to the weights, which
is why they exist only while generating, and ``apply_decode`` copies the current weights into
them (in place, so a captured CUDA graph that reads them stays valid).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from collections.abc import Callable

from lmkit.kernels import decode_attention
from lmkit.model.layers import CausalSelfAttention, SwiGLU
from lmkit.model.transformer import TransformerLM


def _stack_into(module: nn.Module, name: str, *layers: nn.Linear) -> None:
    """Buffer ``name`` of ``module``: the layers' weights stacked along the output dimension,
    written in place where a buffer of that shape, dtype and device is there already."""
    with torch.no_grad():
        weights = [layer.weight for layer in layers]
        old = getattr(module, name, None)
        rows = sum(w.shape[0] for w in weights)
        w0 = weights[0]
        if isinstance(old, torch.Tensor) and old.shape == (rows, w0.shape[1]) and old.dtype == w0.dtype and old.device == w0.device:
            torch.cat(weights, dim=0, out=old)
        else:
            module.register_buffer(name, torch.cat(weights, dim=0), persistent=False)  # (rows, in)


class DecodeAttention(CausalSelfAttention):
    """``CausalSelfAttention`` with stacked q/k/v weights and, optionally, the decode kernel."""

    qkv_weight: torch.Tensor  # (3D, D) copy of [q; k; v]
    arrivals: torch.Tensor  # (B, H) int32: the kernel's scratch counters, zero between calls
    attention_op: Callable[..., torch.Tensor] | None  # decode_attention.decode_attention_op() or None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        input_pos: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend; the arguments and result are ``CausalSelfAttention.forward``'s."""
        B, T, D = x.shape
        cache = self.kv_cache
        if cache is None:  # after model.clear_cache(): the plain layer's forward
            return super().forward(x, cos, sin, input_pos, mask)
        qkv = F.linear(x, self.qkv_weight)  # (B, T, 3D)
        if T == 1 and self.attention_op is not None:
            # RoPE, the cache write and attention over the filled slots in one kernel; the mask
            # is not needed (unused, a compiled step drops its computation).
            y = self.attention_op(qkv, cos, sin, cache.k, cache.v, self.arrivals, input_pos)
            return self.o_proj(y)  # y: (B, 1, D)
        q, k, v = qkv.split(D, dim=-1)  # (B, T, D) each
        return self.attend(q, k, v, cos, sin, input_pos, mask)


class DecodeSwiGLU(SwiGLU):
    """``SwiGLU`` whose gate and value come out of one product with a stacked [w1; w3]."""

    w13_weight: torch.Tensor  # (2F, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D)."""
        gate, value = F.linear(x, self.w13_weight).chunk(2, dim=-1)  # (..., F) each
        return self.w2(F.silu(gate) * value)


def apply_decode(model: TransformerLM, stacked_weights: bool, kernel: bool) -> None:
    """Swap the decode layers into a model after ``setup_cache`` (or refresh them).

    Args:
        model: the model, its KV caches set up.
        stacked_weights: stacked q/k/v and w1/w3 copies (``kernels.stacked_decode_weights``).
        kernel: the one-token attention kernel where ``decode_attention.supported``
            (``kernels.decode_attention_kernel``); it reads the stacked q/k/v, so it needs
            ``stacked_weights``.

    Raises:
        ValueError: if the model has no KV cache.
    """
    if not model.has_cache:
        raise ValueError("apply_decode needs a model after setup_cache")
    if not stacked_weights:
        remove_decode(model)
        return
    cache = model.blocks[0].attn.kv_cache
    op = None
    if kernel and decode_attention.supported(model.config.head_dim, cache.k.device):
        op = decode_attention.decode_attention_op()
    B, H = cache.k.shape[:2]
    for block in model.blocks:
        attn, ffn = block.attn, block.ffn
        _stack_into(attn, "qkv_weight", attn.q_proj, attn.k_proj, attn.v_proj)
        _stack_into(ffn, "w13_weight", ffn.w1, ffn.w3)
        old = getattr(attn, "arrivals", None)
        if not (isinstance(old, torch.Tensor) and old.shape == (B, H) and old.device == cache.k.device):
            attn.register_buffer("arrivals", torch.zeros(B, H, dtype=torch.int32, device=cache.k.device), persistent=False)
        attn.__class__, ffn.__class__ = DecodeAttention, DecodeSwiGLU
        attn.attention_op = op


def remove_decode(model: TransformerLM, keep_buffers: bool = False) -> None:
    """Turn the decode layers back into the plain ones.

    Args:
        model: the model.
        keep_buffers: keep the stacked copies (a captured CUDA graph reads them, and the next
            ``apply_decode`` refreshes them in place); otherwise they are freed.
    """
    for block in model.blocks:
        attn, ffn = block.attn, block.ffn
        if isinstance(attn, DecodeAttention):
            attn.__class__ = CausalSelfAttention
        if isinstance(ffn, DecodeSwiGLU):
            ffn.__class__ = SwiGLU
        if not keep_buffers:
            for module, name in ((attn, "qkv_weight"), (attn, "arrivals"), (ffn, "w13_weight")):
                if name in module._buffers:
                    delattr(module, name)
