"""The decoder-only transformer language model (pre-norm, RMSNorm, RoPE, SwiGLU, untied head).

Notation used in shape comments:
    B  batch size
    T  sequence length of the current call
    D  d_model
    V  vocab_size
    S  max_len of the KV cache

State-dict names (stable; checkpoints and exporters rely on them)::

    tok_embeddings.weight                      (V, D)
    blocks.{i}.norm1.weight                    (D,)
    blocks.{i}.attn.{q,k,v,o}_proj.weight      (D, D)
    blocks.{i}.norm2.weight                    (D,)
    blocks.{i}.ffn.w1.weight / w3.weight       (F, D)
    blocks.{i}.ffn.w2.weight                   (D, F)
    norm.weight                                (D,)
    lm_head.weight                             (V, D)

The RoPE tables and KV caches are non-persistent buffers and never appear in the state_dict.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lmkit.model.config import ModelConfig
from lmkit.model.kv_cache import KVCache
from lmkit.model.layers import CausalSelfAttention, Linear, RMSNorm, SwiGLU
from lmkit.model.rope import precompute_rope

# GPT-2's init scale for every weight matrix.
INIT_STD = 0.02


class Block(nn.Module):
    """One pre-norm transformer block: ``x + attn(norm1(x))`` then ``x + ffn(norm2(x))``."""

    def __init__(self, config: ModelConfig) -> None:
        """Args:
        config: the model shape.
        """
        super().__init__()
        self.norm1 = RMSNorm(config.d_model)
        self.attn = CausalSelfAttention(config.d_model, config.num_heads)
        self.norm2 = RMSNorm(config.d_model)
        self.ffn = SwiGLU(config.d_model, config.d_ff)
        # Activation checkpointing (see TransformerLM.set_activation_checkpointing).
        self.recompute = False

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        input_pos: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, D) -> (B, T, D); the other arguments are passed to ``CausalSelfAttention``."""
        if self.recompute and torch.is_grad_enabled():
            # Inside forward, not around the module call: wrappers that hook the call (FSDP's
            # parameter gathering) stay outside the recomputed region.
            return checkpoint(self._forward, x, cos, sin, input_pos, mask, use_reentrant=False)
        return self._forward(x, cos, sin, input_pos, mask)

    def _forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, input_pos: torch.Tensor | None, mask: torch.Tensor | None
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin, input_pos, mask)
        return x + self.ffn(self.norm2(x))


def linear_weight_count(config: ModelConfig) -> int:
    """Number of weights in all linear layers (attention, SwiGLU, LM head) of a model.

    Args:
        config: the model shape.

    Returns:
        ``L * (4 D^2 + 3 D F) + D V``.
    """
    per_layer = 4 * config.d_model**2 + 3 * config.d_model * config.d_ff
    return config.num_layers * per_layer + config.d_model * config.vocab_size


def flops_per_token(config: ModelConfig, seq_len: int | None = None) -> int:
    """Training FLOPs (forward + backward) per token, the usual MFU estimate.

    ``6 * linear weights`` (2 FLOPs per multiply-add, times 3 for forward + backward) plus
    ``12 * L * D * seq_len`` for the attention scores and their weighted sum, which grow with the
    sequence length. Embedding lookups and norms are ignored.

    Args:
        config: the model shape.
        seq_len: sequence length trained on (default: ``config.context_length``).

    Returns:
        FLOPs per token.
    """
    seq_len = config.context_length if seq_len is None else seq_len
    return 6 * linear_weight_count(config) + 12 * config.num_layers * config.d_model * seq_len


class TransformerLM(nn.Module):
    """Token ids in, next-token logits out. No loss, optimizer or device policy lives here."""

    def __init__(self, config: ModelConfig) -> None:
        """Build the layers and initialise the weights (see ``init_weights``).

        Args:
            config: the model shape.
        """
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.d_model)
        # Untied: a separate output matrix costs V*D weights but trains a little better at
        # small scale and keeps the export to Llama-style checkpoints one-to-one.
        self.lm_head = Linear(config.d_model, config.vocab_size)
        cos, sin = precompute_rope(config.head_dim, config.context_length, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # (context_length, hd/2)
        self.register_buffer("rope_sin", sin, persistent=False)  # (context_length, hd/2)
        # dtype the residual stream between blocks is carried in; None: the embedding's (fp32
        # weights give an fp32 stream even under autocast). See set_residual_dtype.
        self.residual_dtype: torch.dtype | None = None
        self.init_weights()

    def init_weights(self) -> None:
        """GPT-2 style init: N(0, 0.02) everywhere, residual outputs scaled down, gains at 1.

        The output projections that add into the residual stream (``o_proj``, ``w2``) get
        std ``0.02 / sqrt(2 * num_layers)`` so the stream's variance does not grow with depth
        (each block adds two such terms).
        """
        residual_std = INIT_STD / math.sqrt(2 * self.config.num_layers)
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                is_residual = name.endswith(("attn.o_proj", "ffn.w2"))
                std = residual_std if is_residual else INIT_STD
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Keep only each block's input for backward and recompute the block there.

        Trades compute for memory: backward runs every block's forward again (about a third
        more work per step), and the activations held for backward shrink from every block's
        intermediates to one (B, T, D) input per block. For models or batches that would
        otherwise not fit; a plain forward (no gradient) is unaffected.

        Args:
            enabled: on or off, for every block.
        """
        for block in self.blocks:
            block.recompute = enabled

    def compile_blocks(self, backend: str = "inductor", options: dict[str, Any] | None = None) -> None:
        """``torch.compile`` each block's computation, not its call: hooks on the block's call
        (FSDP's parameter gathering) and activation checkpointing stay outside the compiled
        code, where a whole-model compile traced around FSDP's hooks and ran far slower.
        Identical blocks share one compiled graph, so compiling costs one block's tracing, not
        every block's; the state dict is unchanged. ``options``: Inductor's. Irreversible."""
        for block in self.blocks:
            block._forward = torch.compile(block._forward, backend=backend, options=options)

    def set_residual_dtype(self, dtype: torch.dtype | None) -> None:
        """Carry the residual stream between blocks in ``dtype`` (None: the embedding's dtype).

        Under bf16 autocast with fp32 weights the stream is fp32 by default (as in nanoGPT and
        HF): every block adds its bf16 output into fp32. ``torch.bfloat16`` halves the bytes
        the stream moves, as Megatron and torchtitan run it, and as ``lmkit train`` does unless
        ``runtime.fp32_residual`` is set; RMSNorm still computes in fp32.
        Only meaningful under autocast to that dtype or with weights in it.

        Args:
            dtype: e.g. ``torch.bfloat16``, or None.
        """
        self.residual_dtype = dtype

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> TransformerLM:
        # .to(bfloat16) / .half() would round the RoPE tables, and .to_empty() (meta-device
        # init) would leave them uninitialised; rebuild them in fp32 wherever they now live.
        super()._apply(fn, *args, **kwargs)
        cfg = self.config
        device = self.rope_cos.device
        if device.type != "meta":
            self.rope_cos, self.rope_sin = precompute_rope(
                cfg.head_dim, cfg.context_length, cfg.rope_theta, device=device
            )
        return self

    # ---- parameter and cost accounting -------------------------------------------------

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters.

        Args:
            non_embedding: exclude the token embedding and the (untied) LM head, the
                convention of scaling-law papers: what remains is the per-layer compute.

        Returns:
            The count.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_embeddings.weight.numel() + self.lm_head.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token; see the module-level ``flops_per_token``.

        Args:
            seq_len: sequence length (default: ``config.context_length``).

        Returns:
            FLOPs per token.
        """
        return flops_per_token(self.config, seq_len)

    # ---- KV cache ------------------------------------------------------------------------

    def setup_cache(
        self,
        batch_size: int,
        max_len: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        """Give every attention layer a fresh preallocated KV cache.

        Afterwards ``forward`` must be called with ``input_pos`` and attends over the cache.
        (Generation may then swap in faster decode layers: ``lmkit.kernels.decode``.)

        Args:
            batch_size: sequences decoded together.
            max_len: positions to hold, prompt plus new tokens (default and maximum:
                ``config.context_length``, the length of the RoPE tables).
            dtype: cache dtype (default: the model's parameter dtype).
            device: cache device (default: the model's device).

        Raises:
            ValueError: if max_len exceeds the context length or is not positive.
        """
        max_len = self.config.context_length if max_len is None else max_len
        if not 0 < max_len <= self.config.context_length:
            limit = self.config.context_length
            raise ValueError(f"max_len must be in 1..context_length ({limit}), got {max_len}")
        dtype = self.lm_head.weight.dtype if dtype is None else dtype
        device = self.lm_head.weight.device if device is None else device
        for block in self.blocks:
            block.attn.kv_cache = KVCache(
                batch_size, self.config.num_heads, max_len, self.config.head_dim, dtype, device
            )

    def clear_cache(self) -> None:
        """Drop the KV caches (freeing their memory); back to attention within the input."""
        for block in self.blocks:
            block.attn.kv_cache = None

    @property
    def has_cache(self) -> bool:
        """Whether ``setup_cache`` is in effect."""
        return self.blocks[0].attn.kv_cache is not None

    def cache_mask(self, input_pos: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Attention mask over the KV cache: the query at position p sees cache slots 0..p.

        Args:
            input_pos: (T,) positions of the queries.
            dtype: the attention's compute dtype.

        Returns:
            (T, S), a static shape for compile. In half precision an additive mask (0 or -inf)
            in that dtype: cuDNN's attention takes that form, and given a bool mask it would
            convert it again in every layer (11 fewer kernels a token at GPT-2 small). In fp32,
            where cuDNN does not run, the bool mask as before.
        """
        slots = torch.arange(self.blocks[0].attn.kv_cache.max_len, device=input_pos.device)  # (S,)
        allowed = slots[None, :] <= input_pos[:, None]  # (T, S)
        if dtype not in (torch.bfloat16, torch.float16):
            return allowed
        return torch.zeros(allowed.shape, dtype=dtype, device=input_pos.device).masked_fill_(~allowed, float("-inf"))

    # ---- forward -------------------------------------------------------------------------

    def hidden(self, idx: torch.Tensor, input_pos: torch.Tensor | None = None) -> torch.Tensor:
        """Final-normed hidden states, i.e. everything but the LM head.

        Training can use this to compute the LM head and cross-entropy in chunks without ever
        materialising the full (B, T, V) logits.

        Args:
            idx: (B, T) token ids.
            input_pos: (T,) absolute positions of the tokens. Required with a KV cache; without
                one it defaults to ``0..T-1``.

        Returns:
            (B, T, D) hidden states.

        Raises:
            ValueError: if the sequence is longer than the context length, or a KV cache is set
                and input_pos is missing.
        """
        B, T = idx.shape
        mask = None
        if self.has_cache:
            if input_pos is None:
                raise ValueError("input_pos is required when a KV cache is set up")
            # A decode layer that needs no mask (kernels/decode.py) leaves it unused; compiled,
            # Inductor then drops its computation.
            mask = self.cache_mask(input_pos, self.tok_embeddings.weight.dtype)  # (T, S)
        if input_pos is None:
            if T > self.config.context_length:
                raise ValueError(
                    f"sequence length {T} exceeds context_length {self.config.context_length}"
                )
            cos, sin = self.rope_cos[:T], self.rope_sin[:T]  # (T, hd/2) each
        else:
            cos, sin = self.rope_cos[input_pos], self.rope_sin[input_pos]  # (T, hd/2) each
        x = self.tok_embeddings(idx)  # (B, T, D)
        if self.residual_dtype is not None:
            x = x.to(self.residual_dtype)
        for block in self.blocks:
            x = block(x, cos, sin, input_pos, mask)
        return self.norm(x)

    def forward(self, idx: torch.Tensor, input_pos: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits.

        Args:
            idx: (B, T) token ids.
            input_pos: (T,) absolute positions; see ``hidden``.

        Returns:
            (B, T, V) logits (unnormalised, in the compute dtype).
        """
        return self.lm_head(self.hidden(idx, input_pos))
