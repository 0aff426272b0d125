"""Oracle: our weights, renamed but not permuted, give HuggingFace Llama's logits.

This pins the RoPE pairing convention (rotate_half) and the head layout of q/k/v/o.
"""

from __future__ import annotations

import pytest
import torch

from lmkit.app.export import to_hf_names
from lmkit.model import ModelConfig, TransformerLM

def test_logits_match_hf_llama() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = ModelConfig(vocab_size=64, context_length=32, d_model=48, num_layers=2, num_heads=3,
                      d_ff=80, rope_theta=500.0)
    torch.manual_seed(0)
    ours = TransformerLM(cfg)
    with torch.no_grad():
        # Larger weights than the init and non-unit gains: with 0.02-scale weights attention is
        # nearly uniform and a wrong RoPE pairing or theta would hide inside the tolerance.
        for p in ours.parameters():
            p.normal_(0, 0.2) if p.dim() == 2 else p.uniform_(0.5, 1.5)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads, max_position_embeddings=cfg.context_length,
        rms_norm_eps=1e-5, rope_theta=cfg.rope_theta, tie_word_embeddings=False,
        attention_bias=False, mlp_bias=False,
    )
    if getattr(hf_cfg, "rope_parameters", None) is not None:  # newer transformers
        hf_cfg.rope_parameters["rope_theta"] = cfg.rope_theta
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    hf.load_state_dict(to_hf_names(ours.state_dict(), cfg.num_layers))
    idx = torch.randint(0, cfg.vocab_size, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, atol=1e-4, rtol=1e-4)
