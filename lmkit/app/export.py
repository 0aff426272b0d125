"""Exporting checkpoints: lmkit-named safetensors, or a HuggingFace Llama folder.

lmkit's architecture is Llama's (pre-norm RMSNorm with eps 1e-5, RoPE in the rotate_half
pairing, bias-free SwiGLU, untied LM head), so the HuggingFace export is a renaming of the
state_dict: no q/k row permutation is needed because lmkit already pairs dimension j with
j + head_dim/2, as HF's ``rotate_half`` does. ``tests/test_export.py`` checks the logits of
``LlamaForCausalLM.from_pretrained`` against lmkit's.

Both formats write weights only (no optimizer state) with ``safetensors``, which stores raw
tensors and a JSON header and so cannot run code when loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch

from lmkit.data.tokens import atomic_write_bytes
from lmkit.errors import ConfigError
from lmkit.app.inference import EOT, find_tokenizer
from lmkit.model import ModelConfig
from lmkit.tokenizer import Tokenizer
from lmkit.tokenizer.files import token_to_str
from lmkit.training.checkpoint import open_checkpoint

Format = Literal["safetensors", "hf"]

# lmkit state_dict name -> HF LlamaForCausalLM name; {i} is the layer index.
HF_NAMES = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "blocks.{i}.norm1.weight": "model.layers.{i}.input_layernorm.weight",
    "blocks.{i}.attn.q_proj.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blocks.{i}.attn.k_proj.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blocks.{i}.attn.v_proj.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blocks.{i}.attn.o_proj.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blocks.{i}.norm2.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blocks.{i}.ffn.w1.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blocks.{i}.ffn.w3.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blocks.{i}.ffn.w2.weight": "model.layers.{i}.mlp.down_proj.weight",
    "norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
# lmkit's RMSNorm epsilon (lmkit.model.layers.RMSNorm's default).
RMS_NORM_EPS = 1e-5


def to_hf_names(weights: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Rename an lmkit state_dict to HF Llama names (tensors are shared, not copied)."""
    out = {}
    for ours, theirs in HF_NAMES.items():
        for i in range(num_layers) if "{i}" in ours else [0]:
            out[theirs.format(i=i)] = weights[ours.format(i=i)]
    return out


def hf_config(config: ModelConfig, eot_id: int | None, dtype: torch.dtype) -> dict[str, Any]:
    """The ``config.json`` of an equivalent ``LlamaForCausalLM``.

    ``rope_theta`` is written both at the top level (transformers < 5) and in
    ``rope_parameters`` (transformers >= 5).
    """
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_heads,  # plain multi-head attention, no GQA
        "head_dim": config.head_dim,
        "max_position_embeddings": config.context_length,
        "hidden_act": "silu",
        "rms_norm_eps": RMS_NORM_EPS,
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "torch_dtype": str(dtype).removeprefix("torch."),  # transformers < 5
        "dtype": str(dtype).removeprefix("torch."),  # transformers >= 5
        "use_cache": True,
    }


def hf_tokenizer_files(tok: Tokenizer, context_length: int) -> dict[str, str]:
    """HF files for a byte-level BPE tokenizer: ``tokenizer.json`` (fast), the GPT-2 slow files
    (``vocab.json``, ``merges.txt``) and ``tokenizer_config.json``.

    ``tokenizer.json`` spells out what lmkit does: GPT-2's pretokenizer regex, the byte-to-
    unicode map, merges in rank order and the special tokens matched whole.
    """
    vocab = {token_to_str(tok.vocab[i]): i for i in sorted(tok.vocab)}
    merges = [f"{token_to_str(a)} {token_to_str(b)}" for a, b in tok.merges]
    specials = [{"id": tok.token_id(s), "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": False, "special": True} for s in tok.special_tokens]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    fast = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": specials, "normalizer": None,
        "pre_tokenizer": byte_level, "post_processor": byte_level, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }
    eot = EOT if EOT in tok.special_tokens else None
    config = {
        "tokenizer_class": "GPT2Tokenizer", "model_max_length": context_length, "add_prefix_space": False,
        "clean_up_tokenization_spaces": False, "bos_token": eot, "eos_token": eot, "unk_token": eot,
        "added_tokens_decoder": {str(s["id"]): {k: v for k, v in s.items() if k != "id"} for s in specials},
    }
    return {
        "tokenizer.json": json.dumps(fast, ensure_ascii=False),
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False),
    }


def prepare_output(output: Path, force: bool) -> None:
    """Create ``output``; refuse a non-empty directory unless ``force`` (files are overwritten)."""
    if output.exists() and not output.is_dir():
        raise ConfigError(f"{output}: exists and is not a directory; pick another --output")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise ConfigError(f"{output}: directory is not empty; pick an empty or new --output, or pass --force to overwrite")
    output.mkdir(parents=True, exist_ok=True)


def export_checkpoint(
    path: Path | str,
    output: Path | str,
    format: Format = "safetensors",
    *,
    force: bool = False,
    tokenizer_dir: Path | str | None = None,
) -> list[Path]:
    """Write a checkpoint's weights to ``output``.

    ``safetensors``: ``model.safetensors`` with lmkit's tensor names and the model config in its
    metadata, plus ``model_config.json``. ``hf``: a folder ``LlamaForCausalLM.from_pretrained``
    and ``AutoTokenizer.from_pretrained`` load (``config.json``, ``model.safetensors`` and the
    tokenizer files, when the checkpoint's tokenizer is found).

    Args:
        path: checkpoint file.
        output: destination directory (created; must be empty unless ``force``).
        format: ``safetensors`` or ``hf``.
        force: write into a non-empty directory, overwriting files of the same names.
        tokenizer_dir: tokenizer to include instead of the recorded one (hash-checked).

    Returns:
        The files written.

    Raises:
        CheckpointError: unreadable checkpoint or weights that do not fit its config.
        ConfigError: unknown format, or a non-empty output directory without ``force``.
        TokenizerError: a tokenizer whose hash differs from the checkpoint's.
    """
    from safetensors.torch import save

    output = Path(output)
    if format not in ("safetensors", "hf"):
        raise ConfigError(f"unknown export format {format!r}; use safetensors or hf")
    opened = open_checkpoint(path)
    path, state, config = opened.path, opened.state, opened.check()
    prepare_output(output, force)
    weights = {k: v.detach().contiguous() for k, v in state["model"].items()}
    dtype = weights["lm_head.weight"].dtype
    files: dict[str, bytes] = {}
    if format == "safetensors":
        meta = {"format": "pt", "lmkit_format": "lmkit-weights", "model_config": json.dumps(config.model_dump()),
                "lmkit_version": str(state.get("lmkit_version")), "iter": str(state.get("iter")),
                "tokenizer_hash": str((state.get("tokenizer") or {}).get("hash"))}
        files["model.safetensors"] = save(weights, metadata=meta)
        files["model_config.json"] = (json.dumps(config.model_dump(), indent=2) + "\n").encode()
    else:
        tok = find_tokenizer(state, path, Path(tokenizer_dir) if tokenizer_dir else None)
        eot_id = tok.token_id(EOT) if tok is not None and EOT in tok.special_tokens else None
        # "format": "pt" is what transformers expects in the header of a PyTorch safetensors.
        files["model.safetensors"] = save(to_hf_names(weights, config.num_layers), metadata={"format": "pt"})
        files["config.json"] = (json.dumps(hf_config(config, eot_id, dtype), indent=2) + "\n").encode()
        if tok is not None:
            files.update({k: v.encode() for k, v in hf_tokenizer_files(tok, config.context_length).items()})
    written = []
    for name, data in files.items():
        atomic_write_bytes(output / name, data)
        written.append(output / name)
    return written
