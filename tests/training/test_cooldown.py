"""`--cooldown-from`: decaying a wsd run from a checkpoint of its stable phase, as its own run."""

from __future__ import annotations

import pytest
import torch

from lmkit.api import resolve_settings, train
from lmkit.errors import CheckpointError, ConfigError
from lmkit.observe.base import MultiSink
from lmkit.training.checkpoint import link_latest, load_checkpoint


def _train(*base: dict, **overrides):
    merged = {k: v for d in base for k, v in d.items()} | overrides
    return train(resolve_settings(overrides=merged, environ={}), MultiSink([]))


@pytest.fixture
def wsd_run(tiny_overrides, tmp_path):
    """A 30-step wsd run (warmup 4, stable to step 25, decay over the last 5), checkpoints every 10."""
    base = dict(tiny_overrides, schedule="wsd", max_iters=30, lr_decay_iters=30, decay_fraction=5 / 26)
    _train(base, checkpoint_dir=str(tmp_path / "wsd"))
    return base, tmp_path / "wsd"


def test_cooldown_equals_one_run_that_decayed_at_that_step(wsd_run, tmp_path):
    base, wsd = wsd_run
    # Only what a user gives: the checkpoint, the decay's length, a new directory; the rest is the checkpoint's.
    cool = _train(cooldown_from=str(wsd / "ckpt_0000010.pt"), cooldown_iters=6, checkpoint_dir=str(tmp_path / "cool"), wandb=False)
    assert cool.step == 16 and cool.status == "finished"
    # One run whose decay begins at step 10 and ends at 16.
    _train(base, max_iters=16, lr_decay_iters=16, decay_fraction=6 / 12, checkpoint_dir=str(tmp_path / "one"))
    a, b = load_checkpoint(tmp_path / "cool" / "latest.pt"), load_checkpoint(tmp_path / "one" / "latest.pt")
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-6, atol=1e-7)
    assert a["cooldown"]["iter"] == 10 and a["cooldown"]["cooldown_iters"] == 6
    s = a["settings"]
    assert (s["optim"]["schedule"], s["optim"]["lr_decay_iters"], s["train"]["max_iters"]) == ("wsd", 16, 16)
    assert s["checkpoint"]["cooldown_from"] == str(wsd / "ckpt_0000010.pt")
    # The source run is untouched, and the cooldown has a run id of its own.
    assert load_checkpoint(wsd / "latest.pt")["iter"] == 30 and a["run_id"] != load_checkpoint(wsd / "latest.pt")["run_id"]


def test_a_stopped_cooldown_resumes_exactly(wsd_run, tmp_path):
    _, wsd = wsd_run
    args = dict(cooldown_from=str(wsd / "ckpt_0000010.pt"), cooldown_iters=6, wandb=False, checkpoint_interval=3)
    _train(**args, checkpoint_dir=str(tmp_path / "full"))
    # As if it had stopped after its checkpoint at step 12 (steps divisible by 3): that is its newest.
    first = dict(args, checkpoint_dir=str(tmp_path / "split"))
    _train(first)
    split = tmp_path / "split"
    link_latest(split / "ckpt_0000012.pt")
    for later in ("ckpt_0000015.pt", "ckpt_0000016.pt"):
        (split / later).unlink()
    again = _train(first)
    assert again.step == 16
    a, b = load_checkpoint(tmp_path / "full" / "latest.pt"), load_checkpoint(tmp_path / "split" / "latest.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    # Resumed with only its directory: the cooldown it recorded, not the defaults' schedule.
    link_latest(split / "ckpt_0000012.pt")
    (split / "ckpt_0000015.pt").unlink()
    (split / "ckpt_0000016.pt").unlink()
    bare = _train(checkpoint_dir=str(split), wandb=False)
    assert bare.step == 16
    c = load_checkpoint(split / "latest.pt")
    assert c["settings"]["train"]["max_iters"] == 16 and c["settings"]["optim"]["lr_decay_iters"] == 16
    for k in a["model"]:
        assert torch.equal(a["model"][k], c["model"][k]), k


def test_cooldown_from_a_cosine_run_is_refused(tiny_overrides, tmp_path):
    _train(tiny_overrides, max_iters=10, checkpoint_dir=str(tmp_path / "cos"))
    with pytest.raises(ConfigError, match=r"is from a cosine run; a cooldown continues a wsd run") as e:
        _train(cooldown_from=str(tmp_path / "cos"), cooldown_iters=4, checkpoint_dir=str(tmp_path / "c"), wandb=False)
    assert "\n" not in str(e.value)


def test_cooldown_of_another_architecture_is_refused(wsd_run, tmp_path):
    _, wsd = wsd_run
    with pytest.raises(ConfigError, match=r"model.d_ff: --d-ff 128 differs from 64 in the --cooldown-from checkpoint"):
        _train(cooldown_from=str(wsd / "ckpt_0000010.pt"), cooldown_iters=4, d_ff=128, checkpoint_dir=str(tmp_path / "c"), wandb=False)


def test_cooldown_from_the_decay_phase_or_with_a_max_iters_is_refused(wsd_run, tmp_path):
    _, wsd = wsd_run
    with pytest.raises(ConfigError, match=r"is at step 30, in its run's decay"):
        _train(cooldown_from=str(wsd), cooldown_iters=4, checkpoint_dir=str(tmp_path / "c"), wandb=False)
    with pytest.raises(ConfigError, match=r"train.max_iters: set by the cooldown"):
        _train(cooldown_from=str(wsd / "ckpt_0000010.pt"), cooldown_iters=4, max_iters=99, checkpoint_dir=str(tmp_path / "c"), wandb=False)


def test_cooldown_needs_its_own_directory_and_both_flags(wsd_run, tmp_path):
    _, wsd = wsd_run
    source = dict(cooldown_from=str(wsd / "ckpt_0000010.pt"), cooldown_iters=4, checkpoint_dir=str(wsd), wandb=False)
    with pytest.raises(ConfigError, match=r"already holds a run \(not a cooldown\); pick a new --checkpoint-dir"):
        _train(source)  # resume auto: the directory holds the source run itself
    with pytest.raises(CheckpointError, match="a cooldown is a new run"):
        _train(source, resume="never")
    with pytest.raises(ConfigError, match="cooldown_from and cooldown_iters go together"):
        resolve_settings(overrides=dict(cooldown_from=str(wsd)), environ={})
