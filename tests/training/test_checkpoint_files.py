"""Files that are not lmkit checkpoints are named as what they are, in lmkit's words."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import write_token_data
from test_checkpoint_state import good_state

from lmkit.errors import CheckpointError
from lmkit.training.checkpoint import load_checkpoint, manifest_path, save_checkpoint
from lmkit.training.checkpoint_files import describe_non_checkpoint

# Fragments of torch's internals that must never reach a user.
TORCH_TEXT = ("pop from empty list", "miniz", "central directory", "Weights only load failed", "WeightsUnpickler", "weights_only=False")


def refusal(path: Path) -> str:
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    message = str(e.value)
    assert message.startswith(f"{path}: "), message
    assert not any(t in message for t in TORCH_TEXT), message
    return message


def test_token_bin_with_its_json(tmp_path: Path) -> None:
    train = write_token_data(tmp_path / "data" / "train.bin", 500)
    msg = refusal(train)
    assert "a token file written by `lmkit tokenize encode` (its metadata train.json is beside it)" in msg
    assert "--train-data-path" in msg


def test_truncated_checkpoint_without_manifest(tmp_path: Path) -> None:
    good = save_checkpoint(good_state(), tmp_path / "good.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    msg = refusal(cut)
    assert "damaged checkpoint: the archive is incomplete" in msg and "truncated" in msg and "older ckpt_*.pt" in msg


def test_truncated_checkpoint_with_manifest_names_sizes(tmp_path: Path) -> None:
    good = save_checkpoint(good_state(), tmp_path / "good.pt")
    size = good.stat().st_size
    os.truncate(good, size // 2)
    assert f"its manifest says {size}" in refusal(good) and manifest_path(good).exists()


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("empty.pt", b"", "an empty file (0 bytes), not a checkpoint"),
    ("notes.pt", "hello\nthis is text, caf\u00e9\n".encode(), "a text file, not a checkpoint"),
    ("config.pt", b'{"d_model": 64}', "a JSON file, not a checkpoint"),
    ("noise.pt", bytes(range(256)) * 4, "not a checkpoint (binary data that is neither a PyTorch archive nor a known format)"),
])
def test_common_files(tmp_path: Path, name: str, content: bytes, expected: str) -> None:
    (tmp_path / name).write_bytes(content)
    msg = refusal(tmp_path / name)
    assert expected in msg and "pass a checkpoint written by `lmkit train`" in msg


def test_safetensors_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2, 2)}, tmp_path / "model.safetensors")
    assert "a safetensors weights file" in refusal(tmp_path / "model.safetensors")


def test_zip_that_is_not_torch(tmp_path: Path) -> None:
    np.savez(tmp_path / "arrays.npz", a=np.ones(3))
    with zipfile.ZipFile(tmp_path / "docs.zip", "w") as z:
        z.writestr("readme.txt", "hi")
    for p in (tmp_path / "arrays.npz", tmp_path / "docs.zip"):
        assert "a zip archive (1 entries) but not a PyTorch checkpoint" in refusal(p)


def test_bare_state_dict(tmp_path: Path) -> None:
    torch.save({"weight": torch.ones(2), "bias": torch.zeros(2)}, tmp_path / "sd.pt")
    assert "not an lmkit checkpoint: a bare PyTorch state_dict (2 tensors)" in refusal(tmp_path / "sd.pt")


def test_directories(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "a directory with no latest.pt or ckpt_*.pt, so not a run directory" in refusal(empty)
    run = tmp_path / "run"
    save_checkpoint(good_state(), run / "ckpt_0000010.pt")
    assert "a directory without latest.pt; it holds 1 step checkpoint(s) (ckpt_0000010.pt): pass one of them" in refusal(run)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"x")
    assert "a HuggingFace model folder" in refusal(hf)


def test_missing(tmp_path: Path) -> None:
    assert "checkpoint not found" in refusal(tmp_path / "nope.pt")


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/lmkit-ckpt-pwned",))


def test_pickled_code_is_refused_in_our_words(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"format": "lmkit-checkpoint", "version": 1, "model": Exploit()}, evil)
    Path("/tmp/lmkit-ckpt-pwned").unlink(missing_ok=True)
    msg = refusal(evil)
    assert "refused: the file holds pickled Python objects (it references posix.system) that lmkit will not unpickle" in msg
    assert "it was not loaded and nothing in it ran" in msg and msg.endswith("re-save its tensors as a plain dict")
    assert not Path("/tmp/lmkit-ckpt-pwned").exists()


def test_a_checkpoint_is_not_described(tmp_path: Path) -> None:
    assert describe_non_checkpoint(save_checkpoint(good_state(), tmp_path / "ok.pt")) is None
