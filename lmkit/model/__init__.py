"""The transformer language model (imports only torch)."""

from lmkit.model.config import ModelConfig
from lmkit.model.kv_cache import KVCache
from lmkit.model.layers import CausalSelfAttention, RMSNorm, SwiGLU
from lmkit.model.rope import apply_rope, precompute_rope
from lmkit.model.transformer import Block, TransformerLM, flops_per_token, linear_weight_count

__all__ = [
    "Block",
    "CausalSelfAttention",
    "KVCache",
    "ModelConfig",
    "RMSNorm",
    "SwiGLU",
    "TransformerLM",
    "apply_rope",
    "flops_per_token",
    "linear_weight_count",
    "precompute_rope",
]
