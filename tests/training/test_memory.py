"""The memory check before training: estimates against real sizes, refusals before allocating."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from tests.conftest import TINY_MODEL, write_token_data

from lmkit.errors import ConfigError
from lmkit.model import ModelConfig, TransformerLM
from lmkit.settings import resolve_settings
from lmkit.training.memory import check_training_memory, estimate_training_memory, parameter_count

GUIDE_CUSTOM = dict(d_model=512, num_layers=6, num_heads=8, batch_size=64)  # the training guide's "Custom Model"


@pytest.mark.parametrize("shape", [TINY_MODEL, dict(TINY_MODEL, vocab_size=1000, d_ff=96, num_layers=3)])
def test_parameter_count_matches_the_built_model(shape):
    assert parameter_count(ModelConfig(**shape)) == TransformerLM(ModelConfig(**shape)).num_params()


def test_estimate_grows_with_the_batch_and_shrinks_with_accumulation_and_recompute():
    def total(**kw):
        s = resolve_settings(overrides={**GUIDE_CUSTOM, **kw}, environ={})
        return estimate_training_memory(s, "cpu", torch.float32, compiled=False, fused_loss=True)

    base = total()
    assert total(batch_size=128).activations == 2 * base.activations
    assert total(grad_accum_steps=4).activations == base.activations // 4
    # Six layers: one block input each plus two blocks recomputing, about a third of keeping all.
    assert total(activation_checkpointing=True).activations < base.activations / 2
    assert total(grad_accum_steps=4).state == base.state  # the model does not shrink with the micro-batch
    # The chunked loss never holds the whole batch's logits; the plain loss does.
    s = resolve_settings(overrides=GUIDE_CUSTOM, environ={})
    plain = estimate_training_memory(s, "cpu", torch.float32, compiled=False, fused_loss=False)
    assert plain.logits > 10 * base.logits


def test_the_guides_custom_model_is_refused_on_a_24_gb_machine_with_the_fields_to_lower():
    s = resolve_settings(overrides=GUIDE_CUSTOM, environ={})
    with pytest.raises(ConfigError) as err:
        check_training_memory(s, torch.device("cpu"), torch.float32, False, True, available=20 * 10**9)
    msg = str(err.value)
    assert "needs about" in msg and "20.0 GB is free" in msg and "\n" not in msg
    for flag in ("--grad-accum-steps", "--batch-size", "--context-length", "--activation-checkpointing", "--no-memory-check"):
        assert flag in msg
    # The accumulation it proposes does fit.
    accum = int(msg.split("--grad-accum-steps to ")[1].split()[0])
    fitted = resolve_settings(overrides={**GUIDE_CUSTOM, "grad_accum_steps": accum}, environ={})
    assert check_training_memory(fitted, torch.device("cpu"), torch.float32, False, True, available=20 * 10**9)


def test_a_model_too_big_for_any_batch_says_so_and_the_override_lets_it_through():
    s = resolve_settings(overrides=dict(d_model=16384, num_heads=16), environ={})
    with pytest.raises(ConfigError, match="the model itself does not fit: lower --d-model"):
        check_training_memory(s, torch.device("cpu"), torch.float32, False, True, available=24 * 10**9)
    off = resolve_settings(overrides=dict(d_model=16384, num_heads=16, memory_check=False), environ={})
    assert check_training_memory(off, torch.device("cpu"), torch.float32, False, True, available=1).total > 24 * 10**9


# Within the settings' bounds (which refuse 10**9 ids or 10**5 layers outright), far past any machine.
HUGE = [["--d-model", "16384", "--num-heads", "16"], ["--vocab-size", "16000000"], ["--num-layers", "1000"],
        ["--batch-size", "1000000"]]


def test_cli_refuses_before_allocating_under_an_address_space_limit(tmp_path):
    """With the process capped at a few GB, configurations needing hundreds must each end in one
    line (exit 2), not a MemoryError or the OS killing it: the refusal comes before allocating.
    (One subprocess for all of them: each would otherwise pay torch's import.)"""
    data = write_token_data(tmp_path / "train.bin", vocab_size=64)
    common = ["train", "--train-data-path", str(data), "--val-data-path", "", "--checkpoint-dir", str(tmp_path / "run"),
              "--no-wandb", "--device", "cpu", "--max-iters", "1", "--context-length", "64", "--dashboard", "plain"]
    code = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (12 * 2**30, 12 * 2**30))
        import typer
        from lmkit.cli.app import app
        group = typer.main.get_command(app)
        for flags in {HUGE!r}:
            print("rc", group.main([*{common!r}, *flags], standalone_mode=False), flush=True)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.stdout.split() == ["rc", "2"] * len(HUGE), r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == len(HUGE) and all("needs about" in line for line in lines), r.stderr[-2000:]
    assert not (tmp_path / "run" / "latest.pt").exists()
