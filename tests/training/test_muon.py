"""Muon: torch's update, the parameter split, clipping, resume, and what it refuses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmkit.api import resolve_settings, train
from lmkit.errors import ConfigError
from lmkit.model import ModelConfig, TransformerLM
from lmkit.observe.base import MultiSink
from lmkit.training import muon as muon_mod
from lmkit.training.checkpoint import load_checkpoint
from lmkit.training.muon import MuonAdamW, orthogonalise, split_parameters
from lmkit.training.optim import clip_gradients
from lmkit.training.trainer import Trainer

pytestmark = pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")


def _pair(shapes, seed=0, **muon):
    """lmkit's MuonAdamW and torch's Muon over equal copies of matrices of ``shapes``."""
    torch.manual_seed(seed)
    ours = [nn.Parameter(torch.randn(*s)) for s in shapes]
    ref = [nn.Parameter(p.detach().clone()) for p in ours]
    gain = nn.Parameter(torch.ones(4))
    kw = dict(momentum=0.95, nesterov=True, ns_steps=5, weight_decay=0.0, adjust="original") | muon
    opt = MuonAdamW(ours, torch.optim.AdamW([gain], lr=1e-3), lr=0.02, adamw_lr=1e-3, **kw)
    tref = torch.optim.Muon(ref, lr=0.02, momentum=kw["momentum"], nesterov=kw["nesterov"], ns_steps=kw["ns_steps"],
                            weight_decay=kw["weight_decay"], adjust_lr_fn=kw["adjust"])
    return ours, ref, gain, opt, tref


@pytest.mark.parametrize("muon", [{}, {"nesterov": False}, {"weight_decay": 0.1}, {"adjust": "match_rms_adamw"}, {"ns_steps": 3}])
def test_step_equals_torch_muon(muon):
    # Several matrices of one shape (updated as one batch), a tall one and a wide one.
    ours, ref, gain, opt, tref = _pair([(48, 16), (48, 16), (48, 16), (16, 40), (24, 24)], **muon)
    for _ in range(3):
        for a, b in zip(ours, ref):
            g = torch.randn_like(a)
            a.grad, b.grad = g.clone(), g.clone()
        gain.grad = torch.randn(4)
        opt.step()
        tref.step()
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b, rtol=0, atol=0)  # bitwise on CPU
            torch.testing.assert_close(opt.state[a]["momentum_buffer"], tref.state[b]["momentum_buffer"], rtol=0, atol=0)


def test_orthogonalise_whitens_the_spectrum():
    torch.manual_seed(0)
    x = torch.randn(3, 64, 32) @ torch.diag(torch.logspace(-1, 1, 32))  # condition number ~100 times a Gaussian's
    s = torch.linalg.svdvals(orthogonalise(x, 5).float())
    assert s.shape == (3, 32) and s.min() > 0.5 and s.max() < 1.5  # Muon's approximate orthogonality


def test_split_by_name_and_shape():
    model = TransformerLM(ModelConfig(vocab_size=64, context_length=16, d_model=32, num_layers=2, num_heads=4, d_ff=64))
    muon, adamw = split_parameters(model)
    names = {n for n, _ in muon}
    assert names == {f"blocks.{i}.{m}.weight" for i in range(2)
                     for m in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "ffn.w1", "ffn.w2", "ffn.w3")}
    assert all(p.dim() == 2 for _, p in muon)
    rest = {n for n, _ in adamw}
    assert {"tok_embeddings.weight", "lm_head.weight", "norm.weight", "blocks.0.norm1.weight"} <= rest
    assert len(names) + len(rest) == len(list(model.parameters()))


def test_clip_scale_reaches_both_parts_as_clipping_the_gradients_would():
    ours, _, gain, opt, _ = _pair([(16, 8), (16, 8)])
    clone = [nn.Parameter(p.detach().clone()) for p in ours]
    gclone = nn.Parameter(gain.detach().clone())
    other = MuonAdamW(clone, torch.optim.AdamW([gclone], lr=1e-3), lr=0.02, adamw_lr=1e-3, momentum=0.95, nesterov=True,
                      ns_steps=5, weight_decay=0.0, adjust="original")
    for step in range(2):
        torch.manual_seed(step)
        for a, b in zip(ours + [gain], clone + [gclone]):
            g = 100 * torch.randn_like(a)
            a.grad, b.grad = g.clone(), g.clone()
        clip_gradients(opt, ours + [gain], 1.0)  # folded into the step as grad_scale
        assert opt.grad_scale is not None
        torch.nn.utils.clip_grad_norm_(clone + [gclone], 1.0)  # the gradients themselves clipped
        opt.step()
        other.step()
        for a, b in zip(ours + [gain], clone + [gclone]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        for a, b in zip(ours, clone):
            torch.testing.assert_close(opt.state[a]["momentum_buffer"], other.state[b]["momentum_buffer"], rtol=1e-5, atol=1e-7)


def test_schedule_drives_both_learning_rates(tiny_overrides):
    s = resolve_settings(overrides=dict(tiny_overrides, optimizer="muon", muon_lr=0.05, learning_rate=1e-3, min_lr=1e-4, max_iters=1), environ={})
    trainer = Trainer(s)
    try:
        trainer.run()
        kinds = {g["kind"]: g for g in trainer.optimizer.param_groups}
        # Step 0 of a 4-step warmup: a quarter of each peak.
        assert kinds["adamw"]["lr"] == pytest.approx(1e-3 / 4) and kinds["muon"]["lr"] == pytest.approx(0.05 / 4)
    finally:
        trainer.release_run_dir()


def test_resume_is_bitwise_with_muon_and_wsd(tiny_overrides, tmp_path):
    base = dict(tiny_overrides, optimizer="muon", schedule="wsd", decay_fraction=0.5, max_iters=20, lr_decay_iters=20,
                log_interval=1, checkpoint_interval=10, grad_accum_steps=2)
    train(resolve_settings(overrides=dict(base, checkpoint_dir=str(tmp_path / "full")), environ={}), MultiSink([]))
    train(resolve_settings(overrides=dict(base, checkpoint_dir=str(tmp_path / "split"), max_iters=10), environ={}), MultiSink([]))
    train(resolve_settings(overrides=dict(base, checkpoint_dir=str(tmp_path / "split")), environ={}), MultiSink([]))
    a, b = (load_checkpoint(tmp_path / d / "latest.pt") for d in ("full", "split"))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and any("momentum_buffer" in v for v in sa.values())
    for k in sa:
        for key, v in sa[k].items():
            assert torch.equal(v, sb[k][key]), (k, key)


def test_optimizer_cannot_change_on_resume(tiny_overrides):
    train(resolve_settings(overrides=dict(tiny_overrides, max_iters=4), environ={}), MultiSink([]))
    with pytest.raises(ConfigError, match="optim.optimizer differs from the checkpoint"):
        train(resolve_settings(overrides=dict(tiny_overrides, max_iters=8, optimizer="muon"), environ={}), MultiSink([]))


def test_muon_with_fsdp_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="optimizer muon does not work with parallel fsdp") as e:
        resolve_settings(overrides=dict(optimizer="muon", parallel="fsdp"), environ={})
    assert "\n" not in str(e.value)


def test_older_torch_is_refused_in_one_line(monkeypatch):
    monkeypatch.delattr(torch.optim, "Muon")
    model = TransformerLM(ModelConfig(vocab_size=64, context_length=16, d_model=32, num_layers=1, num_heads=4, d_ff=64))
    s = resolve_settings(overrides=dict(optimizer="muon"), environ={})
    with pytest.raises(ConfigError, match=r"muon needs torch >= 2.9 .* use --optimizer adamw"):
        muon_mod.build_muon(model, lambda m: torch.optim.AdamW(m.parameters()), s.optim)
