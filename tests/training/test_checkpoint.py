"""lmkit.training.checkpoint, directly: atomic, verified files; one loader that refuses corruption."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from tests.conftest import TINY_MODEL

from lmkit.errors import CheckpointError
from lmkit.model import ModelConfig, TransformerLM
from lmkit.settings import Settings
from lmkit.training.checkpoint import (
    LATEST, link_latest, load_checkpoint, manifest_path, newest_intact, open_checkpoint, save_checkpoint,
)


@functools.cache
def _state() -> dict:
    torch.manual_seed(0)
    config = ModelConfig(**TINY_MODEL)
    return {
        "format": "lmkit-checkpoint", "version": 1, "model": TransformerLM(config).state_dict(), "iter": 4,
        "settings": Settings.model_validate({"model": TINY_MODEL}).model_dump(mode="json"),
        "model_config": config.model_dump(), "tokenizer": {"dir": None, "hash": None, "vocab_size": 64},
    }


def _save(path: Path, **changes) -> Path:
    return save_checkpoint({**_state(), **changes}, path)


def test_round_trip_with_manifest_and_no_temp_files(tmp_path) -> None:
    path = _save(tmp_path / "ckpt_0000004.pt")
    assert manifest_path(path).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_0000004.pt", "ckpt_0000004.pt.sha256"]
    opened = open_checkpoint(path)
    assert opened.path == path and opened.config == ModelConfig(**TINY_MODEL) and opened.state["iter"] == 4
    assert all(torch.equal(opened.state["model"][k], v) for k, v in _state()["model"].items())


def test_run_directory_opens_its_latest(tmp_path) -> None:
    link_latest(_save(tmp_path / "ckpt_0000004.pt"))
    assert open_checkpoint(tmp_path).path == tmp_path / LATEST


def test_unchecked_open_defers_the_field_checks(tmp_path) -> None:
    bad = {**_state()["model_config"], "num_heads": 3}  # does not divide d_model
    path = _save(tmp_path / "bad.pt", model_config=bad)
    with pytest.raises(CheckpointError, match="model_config describes an impossible model"):
        open_checkpoint(path)
    opened = open_checkpoint(path, check=False)  # read fine; only the check fails
    assert opened.config is None and opened.state["iter"] == 4
    with pytest.raises(CheckpointError, match="num_heads"):
        opened.check()


def test_flipped_byte_is_refused_as_damaged(tmp_path) -> None:
    path = _save(tmp_path / "ckpt.pt")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged checkpoint: contents do not match its sha256 manifest"):
        open_checkpoint(path)


def test_truncated_file_is_refused(tmp_path) -> None:
    path = _save(tmp_path / "ckpt.pt")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="damaged checkpoint: 1000 bytes, its manifest says"):
        load_checkpoint(path)
    manifest_path(path).unlink()  # a copy without its manifest: torch's own reading fails instead
    with pytest.raises(CheckpointError, match="damaged or truncated|damaged checkpoint"):
        load_checkpoint(path)


def test_a_crash_mid_save_leaves_the_previous_file_whole(tmp_path, monkeypatch) -> None:
    path = _save(tmp_path / "ckpt.pt")
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # the process killed half-way through serialising

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        _save(path, iter=5)
    assert path.read_bytes() == before and load_checkpoint(path)["iter"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "ckpt.pt.sha256"]  # no temp left


def test_newest_intact_skips_a_damaged_latest(tmp_path) -> None:
    _save(tmp_path / "ckpt_0000002.pt", iter=2)
    link_latest(_save(tmp_path / "ckpt_0000004.pt"))
    (tmp_path / LATEST).unlink()  # a hard link: replace it rather than damage ckpt_0000004 with it
    (tmp_path / LATEST).write_bytes(b"not a checkpoint at all")
    warnings: list[str] = []
    path, state = newest_intact(tmp_path, warnings.append)
    assert (path.name, state["iter"]) == ("ckpt_0000004.pt", 4)
    assert len(warnings) == 1 and "trying an older checkpoint" in warnings[0]
