"""A preallocated key/value cache for one attention layer.

Notation used in shape comments:
    B  batch size
    H  num_heads
    T  positions written in this call (the prompt length at prefill, 1 when decoding)
    S  max_len, the cache's capacity in positions
    hd head_dim

The buffers have a fixed shape for the whole generation and are written in place, so the
decode step sees the same tensor shapes every call: that is what lets ``torch.compile`` (and
CUDA graphs under ``mode="reduce-overhead"``) capture it once instead of recompiling per token.
"""

from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    """Static key/value buffers of shape (B, H, S, hd), filled at given positions."""

    def __init__(
        self,
        batch_size: int,
        num_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        """Args:
        batch_size: sequences decoded together (B).
        num_heads: attention heads (H).
        max_len: positions the cache can hold (S); prompt plus generated tokens.
        head_dim: width of one head (hd).
        dtype: storage dtype of keys and values.
        device: where the buffers live.
        """
        super().__init__()
        shape = (batch_size, num_heads, max_len, head_dim)
        # Non-persistent: a cache is scratch space, never part of a checkpoint's state_dict.
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    @property
    def max_len(self) -> int:
        """Number of positions the cache holds."""
        return self.k.shape[2]

    def update(
        self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write new keys/values at ``input_pos`` and return the whole cache.

        Args:
            input_pos: (T,) long positions to write, each < max_len.
            k: (B, H, T, hd) new keys.
            v: (B, H, T, hd) new values.

        Returns:
            ``(k_all, v_all)``, the full buffers, each (B, H, S, hd); slots not yet written hold
            zeros and must be masked out by the caller.
        """
        # index_copy_ along the position axis keeps shapes static (no slicing by a host int).
        self.k.index_copy_(2, input_pos, k.to(self.k.dtype))
        self.v.index_copy_(2, input_pos, v.to(self.v.dtype))
        return self.k, self.v

    def reset(self) -> None:
        """Zero the buffers (not needed for correctness, since unwritten slots are masked)."""
        self.k.zero_()
        self.v.zero_()
