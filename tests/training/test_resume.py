"""lmkit.training.resume, directly: what is resumed from, and what a resumed run may change."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from tests.conftest import TINY_MODEL

from lmkit.errors import CheckpointError, ConfigError
from lmkit.model import ModelConfig, TransformerLM
from lmkit.settings import Settings
from lmkit.training.checkpoint import LATEST, link_latest, save_checkpoint
from lmkit.training.resume import load_resume_state, reconcile_settings


def _settings(**model) -> Settings:
    return Settings.model_validate({"model": {**TINY_MODEL, **model}, "train": {"max_iters": 10}})


@functools.cache
def _state() -> dict:
    torch.manual_seed(0)
    config = ModelConfig(**TINY_MODEL)
    model = TransformerLM(config)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    opt.step()
    names = {id(p): n for n, p in model.named_parameters()}
    return {
        "format": "lmkit-checkpoint", "version": 1, "model": model.state_dict(), "iter": 6,
        "optimizer": {"state": {names[id(p)]: s for p, s in opt.state.items()}, "param_groups": []},
        "rng": {"torch": torch.get_rng_state()}, "settings": _settings().model_dump(mode="json"),
        "model_config": config.model_dump(), "tokenizer": {"dir": None, "hash": None, "vocab_size": 64},
    }


def _run_dir(root: Path) -> Path:
    link_latest(save_checkpoint({**_state(), "iter": 3}, root / "ckpt_0000003.pt"))
    link_latest(save_checkpoint(_state(), root / "ckpt_0000006.pt"))
    return root


def test_never_and_an_empty_directory_start_fresh(tmp_path) -> None:
    assert load_resume_state("never", _run_dir(tmp_path), print) is None
    assert load_resume_state("auto", tmp_path / "empty", print) is None


def test_auto_takes_latest_and_restores_it_exactly(tmp_path) -> None:
    path, state = load_resume_state("auto", _run_dir(tmp_path), print)
    assert path == tmp_path / LATEST and state["iter"] == 6
    assert all(torch.equal(state["model"][k], v) for k, v in _state()["model"].items())
    assert torch.equal(state["rng"]["torch"], _state()["rng"]["torch"])
    saved = _state()["optimizer"]["state"]
    assert all(torch.equal(state["optimizer"]["state"][n]["exp_avg"], s["exp_avg"]) for n, s in saved.items())


def test_auto_falls_back_past_a_damaged_latest_with_a_warning(tmp_path) -> None:
    run = _run_dir(tmp_path)
    (run / LATEST).unlink()
    (run / LATEST).write_bytes(b"\0" * 64)
    notices: list[str] = []
    path, state = load_resume_state("auto", run, notices.append)
    assert state["iter"] == 6 and path.name == "ckpt_0000006.pt"
    assert notices and notices[0].startswith("warning: ")


def test_explicit_checkpoint_must_exist(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="--resume checkpoint not found"):
        load_resume_state(str(tmp_path / "nope.pt"), tmp_path, print)
    path, state = load_resume_state(str(_run_dir(tmp_path) / "ckpt_0000003.pt"), tmp_path, print)
    assert state["iter"] == 3


def test_a_changed_architecture_is_refused_and_a_schedule_change_applied(tmp_path) -> None:
    notices: list[str] = []
    wider = _settings(d_model=64, d_ff=128)
    with pytest.raises(ConfigError, match="model.d_model differs from the checkpoint"):
        reconcile_settings(wider, _state(), Path("x.pt"), notices.append)
    longer = Settings.model_validate({**_settings().model_dump(mode="json"), "train": {"max_iters": 20}})
    out = reconcile_settings(longer, _state(), Path("x.pt"), notices.append)
    assert out.train.max_iters == 20 and "max_iters: 10 -> 20" in notices[-1] and "at step 6" in notices[-1]


def test_weights_only_checkpoint_cannot_resume() -> None:
    with pytest.raises(CheckpointError, match="holds no optimizer state"):
        reconcile_settings(_settings(), {**_state(), "optimizer": None}, Path("w.pt"), print)
