"""TransformerLM on tiny CPU configs: shapes, causality, counts, init, names, learning."""

from __future__ import annotations

import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from lmkit.model import ModelConfig, TransformerLM, flops_per_token, linear_weight_count

TINY = dict(vocab_size=50, context_length=16, d_model=32, num_layers=2, num_heads=4, d_ff=48)


@pytest.fixture
def model() -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(ModelConfig(**TINY))


def test_config_defaults_match_settings() -> None:
    from lmkit.settings import ModelSettings

    assert ModelConfig() == ModelConfig.from_settings(ModelSettings())
    assert ModelConfig().head_dim == 64


def test_config_from_any_object_with_the_fields() -> None:
    cfg = ModelConfig.from_settings(SimpleNamespace(**TINY, rope_theta=500.0))
    assert cfg == ModelConfig(**TINY, rope_theta=500.0)
    assert cfg.head_dim == 8


@pytest.mark.parametrize("bad", [dict(num_heads=5), dict(d_model=12, num_heads=4), dict(d_ff=0)])
def test_config_rejects_impossible_shapes(bad: dict) -> None:
    with pytest.raises(ValueError):
        ModelConfig(**{**TINY, **bad})


def test_shapes(model: TransformerLM) -> None:
    idx = torch.randint(0, 50, (3, 11))
    assert model(idx).shape == (3, 11, 50)
    assert model.hidden(idx).shape == (3, 11, 32)
    torch.testing.assert_close(model(idx), model.lm_head(model.hidden(idx)))


def test_rejects_sequences_longer_than_context(model: TransformerLM) -> None:
    with pytest.raises(ValueError, match="context_length"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_causal(model: TransformerLM) -> None:
    idx = torch.randint(0, 50, (2, 12))
    changed = idx.clone()
    changed[:, 7] = (idx[:, 7] + 1) % 50
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_param_count_by_hand(model: TransformerLM) -> None:
    V, D, L, Fh = 50, 32, 2, 48
    per_block = 4 * D * D + 3 * D * Fh + 2 * D  # q,k,v,o + w1,w2,w3 + two norm gains
    assert model.num_params() == V * D + L * per_block + D + D * V
    assert model.num_params(non_embedding=True) == L * per_block + D


def test_flops_formula(model: TransformerLM) -> None:
    V, D, L, Fh, T = 50, 32, 2, 48, 16
    linear = L * (4 * D * D + 3 * D * Fh) + D * V
    assert linear_weight_count(model.config) == linear
    assert model.flops_per_token() == 6 * linear + 12 * L * D * T
    assert model.flops_per_token(seq_len=4) == 6 * linear + 12 * L * D * 4
    assert flops_per_token(model.config, 4) == model.flops_per_token(4)


def test_gpt2_small_shape_counts() -> None:
    """Default (GPT-2 small) shape: counted on the meta device, so nothing is allocated."""
    with torch.device("meta"):
        m = TransformerLM(ModelConfig())
    linear = 12 * (4 * 768**2 + 3 * 768 * 3072) + 768 * 50257
    assert m.num_params() == linear + 50257 * 768 + 25 * 768
    assert m.flops_per_token() == 6 * linear + 12 * 12 * 768 * 1024


def test_state_dict_names_are_stable(model: TransformerLM) -> None:
    names = set(model.state_dict())
    expected = {"tok_embeddings.weight", "norm.weight", "lm_head.weight"}
    for i in range(2):
        p = f"blocks.{i}."
        expected |= {p + "norm1.weight", p + "norm2.weight"}
        expected |= {f"{p}attn.{n}_proj.weight" for n in "qkvo"}
        expected |= {f"{p}ffn.w{n}.weight" for n in (1, 2, 3)}
    assert names == expected  # in particular, no rope tables and no caches
    model.setup_cache(1)
    assert set(model.state_dict()) == expected


def test_init_statistics() -> None:
    torch.manual_seed(0)
    m = TransformerLM(ModelConfig(vocab_size=512, context_length=8, d_model=256, num_layers=8,
                                  num_heads=4, d_ff=512))
    resid = 0.02 / math.sqrt(16)
    assert m.blocks[0].attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert m.tok_embeddings.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert m.blocks[3].attn.o_proj.weight.std().item() == pytest.approx(resid, rel=0.05)
    assert m.blocks[3].ffn.w2.weight.std().item() == pytest.approx(resid, rel=0.05)
    assert torch.equal(m.norm.weight, torch.ones(256))


def test_rope_tables_stay_fp32_after_dtype_cast(model: TransformerLM) -> None:
    ref = model.rope_cos.clone()
    model.to(torch.bfloat16)
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert model.rope_cos.dtype == torch.float32
    torch.testing.assert_close(model.rope_cos, ref, atol=0, rtol=0)


def test_meta_init_then_to_empty_rebuilds_rope_tables(model: TransformerLM) -> None:
    with torch.device("meta"):
        m = TransformerLM(ModelConfig(**TINY))
    m.to_empty(device="cpu")
    torch.testing.assert_close(m.rope_sin, model.rope_sin, atol=0, rtol=0)


def test_overfits_one_batch(model: TransformerLM) -> None:
    torch.manual_seed(0)
    idx = torch.randint(0, 50, (4, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        logits = model(idx[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 50), idx[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_import_pulls_in_only_torch() -> None:
    # One interpreter (a torch import is seconds) for two checks: the model package needs only
    # torch and its config type, lmkit.settings (so pydantic and yaml, never a UI or logging
    # library, nor any other part of lmkit), and the whole Python API -- what every lmkit command
    # imports -- leaves torch.compile's machinery unimported until something compiles.
    code = (
        "import sys, lmkit.model\n"
        "bad = [m for m in ('rich', 'wandb', 'typer') if m in sys.modules]\n"
        "ok = ('lmkit', 'lmkit.model', 'lmkit.settings', 'lmkit.settings_sections', 'lmkit.settings_mixture', 'lmkit.settings_sources', 'lmkit.errors')\n"
        "bad += [m for m in sys.modules if m.startswith('lmkit.') and not m.startswith('lmkit.model.') and m not in ok]\n"
        "import lmkit.api\n"
        "bad += [m for m in ('torch._dynamo', 'torch._inductor') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_activation_checkpointing_same_gradients_far_less_saved() -> None:
    """Recomputed blocks give the same loss and gradients, and backward keeps much less: here
    the saved-tensor bytes (what stays alive between forward and backward) drop by >3x."""
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(vocab_size=100, context_length=32, d_model=32, num_layers=3, num_heads=4, d_ff=64))
    x = torch.randint(0, 100, (2, 32))

    def step() -> tuple[float, list[torch.Tensor], int]:
        model.zero_grad(set_to_none=True)
        saved = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten())
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()], sum(saved)

    loss, grads, saved = step()
    model.set_activation_checkpointing(True)
    ac_loss, ac_grads, ac_saved = step()
    assert ac_loss == loss
    for g, ref in zip(ac_grads, grads):
        torch.testing.assert_close(g, ref, rtol=0, atol=0)
    assert ac_saved * 3 < saved, (ac_saved, saved)
    with torch.no_grad():  # no gradient, nothing to recompute: a plain forward
        torch.testing.assert_close(model(x), model.eval()(x))


def test_activation_checkpointing_under_compile_matches_eager() -> None:
    # aot_eager: Dynamo + AOTAutograd (which must handle the checkpointed region), no codegen.
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(vocab_size=64, context_length=16, d_model=32, num_layers=2, num_heads=4, d_ff=64))
    model.set_activation_checkpointing(True)
    x = torch.randint(0, 64, (2, 16))
    grads = []
    for fn in (model, torch.compile(model, backend="aot_eager")):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(fn(x).flatten(0, 1), x.flatten()).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for g, ref in zip(*grads):
        torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()


@pytest.mark.parametrize("recompute", [False, True])
def test_compile_blocks_same_gradients_one_graph_same_state_dict(recompute: bool) -> None:
    """Block-by-block compile (what FSDP runs): the same loss and gradients as eager, with or
    without activation checkpointing, one graph shared by the identical blocks, and the state
    dict a checkpoint would hold unchanged."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    cfg = ModelConfig(vocab_size=64, context_length=16, d_model=32, num_layers=3, num_heads=4, d_ff=64)
    torch.manual_seed(0)
    eager, compiled = TransformerLM(cfg), TransformerLM(cfg)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_blocks(backend="aot_eager")
    x = torch.randint(0, 64, (2, 16))
    grads = []
    for model in (eager, compiled):
        model.set_activation_checkpointing(recompute)
        loss = F.cross_entropy(model(x).flatten(0, 1), x.flatten())
        loss.backward()
        grads.append((loss.detach(), [p.grad for p in model.parameters()]))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-6, atol=1e-6)
    for g, ref in zip(grads[1][1], grads[0][1]):
        torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-6)
    assert counters["stats"]["unique_graphs"] == 1
    assert list(compiled.state_dict()) == list(eager.state_dict())
    torch._dynamo.reset()


def test_bf16_residual_stream_under_autocast() -> None:
    """set_residual_dtype(bf16) carries the stream between blocks in bf16 under autocast (half
    the bytes), giving the fp32 stream's loss within bf16 rounding; None restores fp32."""
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(vocab_size=100, context_length=32, d_model=32, num_layers=3, num_heads=4, d_ff=64))
    x = torch.randint(0, 100, (2, 32))
    seen: list[torch.dtype] = []
    model.blocks[1].register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))

    def loss() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return F.cross_entropy(model(x).flatten(0, 1).float(), x.flatten())

    ref = loss()
    model.set_residual_dtype(torch.bfloat16)
    low = loss()
    low.backward()
    assert seen == [torch.float32, torch.bfloat16]
    torch.testing.assert_close(low, ref, rtol=2e-2, atol=0)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.set_residual_dtype(None)
    loss()
    assert seen[-1] == torch.float32
