"""The transformer's shape as a plain dataclass.

The model package imports only torch, so it cannot depend on the pydantic settings tree; this
dataclass mirrors ``lmkit.settings.ModelSettings`` field for field (same names, same defaults)
and ``ModelConfig.from_settings`` copies them across by attribute name.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass
class ModelConfig:
    """Hyper-parameters that fix a model's architecture (and so its state_dict shapes)."""

    # Token ids the model embeds and predicts; GPT-2's BPE has 50257.
    vocab_size: int = 50257
    # Longest sequence seen; sizes the RoPE tables and the default KV cache.
    context_length: int = 1024
    # Width of the residual stream.
    d_model: int = 768
    # Number of transformer blocks.
    num_layers: int = 12
    # Attention heads per block; must divide d_model, and the head size must be even for RoPE.
    num_heads: int = 12
    # SwiGLU hidden width; ~8/3 * d_model matches the cost of a 4x GELU MLP.
    d_ff: int = 3072
    # RoPE base period; larger values rotate more slowly and suit longer contexts.
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        # Checked here (not only in settings) because a config can be built directly in code.
        for name in ("vocab_size", "context_length", "d_model", "num_layers", "num_heads", "d_ff"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.rope_theta <= 0:
            raise ValueError(f"rope_theta must be positive, got {self.rope_theta}")
        if self.d_model % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide d_model ({self.d_model})")
        if self.head_dim % 2:
            raise ValueError(f"head size d_model/num_heads = {self.head_dim} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        """Width of one attention head, ``d_model // num_heads``."""
        return self.d_model // self.num_heads

    @classmethod
    def from_settings(cls, model_settings: Any) -> ModelConfig:
        """Build a config from any object with the same attribute names.

        Duck-typed so that ``lmkit.settings.ModelSettings`` (pydantic) works without the model
        package importing pydantic.

        Args:
            model_settings: an object exposing ``vocab_size``, ``context_length``, ``d_model``,
                ``num_layers``, ``num_heads``, ``d_ff`` and ``rope_theta``.

        Returns:
            A new ``ModelConfig``.

        Raises:
            ValueError: if the values describe an impossible model.
        """
        return cls(**{f.name: getattr(model_settings, f.name) for f in fields(cls)})
