"""Checkpoint dicts are checked (types, ranges, fit with their tensors) before anything is built."""

from __future__ import annotations

import copy
import functools
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tests.conftest import TINY_MODEL

from lmkit.errors import CheckpointError
from lmkit.model import ModelConfig, TransformerLM
from lmkit.settings import Settings
from lmkit.training.checkpoint import load_checkpoint, save_checkpoint
from lmkit.training.checkpoint_state import validate_checkpoint_state, validate_resume_state


def good_state() -> dict:
    """A weights-plus-settings checkpoint of the tiny model, as `lmkit train` writes it (a copy)."""
    return copy.deepcopy(_good_state())


@functools.cache
def _good_state() -> dict:
    torch.manual_seed(0)
    config = ModelConfig(**TINY_MODEL)
    settings = Settings.model_validate({"model": TINY_MODEL}).model_dump(mode="json")
    model = TransformerLM(config)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    opt.step()
    names = {id(p): n for n, p in model.named_parameters()}
    opt_state = {"state": {names[id(p)]: s for p, s in opt.state.items()}, "param_groups": []}
    return {
        "format": "lmkit-checkpoint", "version": 1, "model": model.state_dict(), "optimizer": opt_state, "iter": 5,
        "tokens_seen": 640, "best_val_loss": 3.2, "val_loss": 3.2, "train_loss": 3.3, "elapsed_s": 1.5,
        "rng": {"torch": torch.get_rng_state()}, "settings": settings, "model_config": config.model_dump(),
        "wandb_run_id": None, "world_size": 1, "tokenizer": {"dir": None, "hash": None, "vocab_size": 64},
    }


def set_path(state: dict, dotted: str, value) -> dict:
    state = copy.deepcopy(state)
    *parents, last = dotted.split(".")
    target = state
    for p in parents:
        target = target[p]
    target[last] = value
    return state


# (field to change, value, text the error must contain)
CRAFTED = [
    ("model_config.num_layers", 2.0, "model_config.num_layers must be a positive integer, got 2.0 (float)"),
    ("model_config.num_layers", True, "model_config.num_layers must be a positive integer"),
    ("model_config.d_model", "32", "model_config.d_model must be a positive integer, got '32' (str)"),
    ("model_config.vocab_size", -64, "model_config.vocab_size must be a positive integer"),
    ("model_config.context_length", 2**31, "model_config.context_length 2,147,483,648 is out of range"),
    ("model_config.rope_theta", float("nan"), "model_config.rope_theta must be a positive finite number"),
    ("model_config.num_heads", 3, "model_config describes an impossible model"),
    ("model_config.num_layers", 3, "num_layers is 3 but the weights hold blocks 0..1"),
    ("model_config.num_layers", 10**9, "num_layers is 1000000000 but the weights hold blocks 0..1"),
    ("model_config.vocab_size", 65, "weights do not match model_config: tok_embeddings.weight"),
    ("model_config.d_ff", 96, "weights do not match model_config"),
    ("model_config.surprise", 1, "model_config.surprise is not a model setting"),
    ("iter", "many", "iter must be an integer >= 0, got 'many' (str)"),
    ("iter", -1, "iter must be an integer >= 0"),
    ("tokens_seen", 1.5, "tokens_seen must be an integer >= 0"),
    ("elapsed_s", "long", "elapsed_s must be a number of seconds"),
    ("best_val_loss", "low", "best_val_loss must be a number or none"),
    ("settings", "fast", "settings must be a mapping of sections, got 'fast' (str)"),
    ("settings.model", [1], "settings.model must be a mapping"),
    ("settings.model.d_model", 64, "settings.model.d_model is 64 (int) but model_config says 32"),
    ("tokenizer", "gpt2", "tokenizer must be a mapping"),
    ("tokenizer.hash", 5, "tokenizer.hash must be text"),
    ("optimizer", [], "optimizer must be a mapping"),
    ("model", {}, "model must be a non-empty state_dict of tensors"),
    ("model.norm.weight", "w", "model['norm.weight'] must be a named tensor"),
    ("world_size", 0, "world_size must be an integer >= 1"),
]


def _crafted(field: str, value) -> dict:
    state = good_state()
    if field.startswith("model.") and field != "model":
        state = copy.deepcopy(state)
        state["model"][field.removeprefix("model.")] = value
        return state
    return set_path(state, field, value)


def test_a_good_state_validates() -> None:
    assert validate_checkpoint_state(good_state(), Path("ok.pt")) == ModelConfig(**TINY_MODEL)
    validate_resume_state(good_state(), Path("ok.pt"))


@pytest.mark.parametrize(("field", "value", "message"), CRAFTED, ids=[f"{f}={v!r}"[:40] for f, v, _ in CRAFTED])
def test_crafted_fields_are_refused_naming_file_and_field(field, value, message) -> None:
    with pytest.raises(CheckpointError) as e:
        validate_checkpoint_state(_crafted(field, value), Path("runs/x/latest.pt"))
    assert str(e.value).startswith("runs/x/latest.pt: ")
    assert message in str(e.value)


def test_huge_layer_count_is_refused_without_building_blocks() -> None:
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="num_layers"):
        validate_checkpoint_state(_crafted("model_config.num_layers", 10**9), Path("x.pt"))
    assert time.perf_counter() - t0 < 2


def test_rope_tables_out_of_proportion_to_the_weights() -> None:
    # 2**20 positions is within range, but with head size 32 the tables (192 MiB) dwarf 70 KB of weights.
    state = set_path(_crafted("model_config.context_length", 2**20), "settings.model.context_length", 2**20)
    state = set_path(set_path(state, "model_config.num_heads", 1), "settings.model.num_heads", 1)
    with pytest.raises(CheckpointError, match="context_length 1,048,576 would need 192 MiB of RoPE tables"):
        validate_checkpoint_state(state, Path("x.pt"))


def test_version_that_is_not_an_integer(tmp_path: Path) -> None:
    save_checkpoint(good_state(), tmp_path / "ok.pt")
    state = torch.load(tmp_path / "ok.pt", weights_only=True)
    state["version"] = "1"
    torch.save(state, tmp_path / "v.pt")
    with pytest.raises(CheckpointError, match="version must be a positive integer, got '1'"):
        load_checkpoint(tmp_path / "v.pt")


def test_load_checkpoint_validates(tmp_path: Path) -> None:
    save_checkpoint(_crafted("model_config.num_layers", 2.0), tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="model_config.num_layers"):
        load_checkpoint(tmp_path / "bad.pt")
    assert load_checkpoint(tmp_path / "bad.pt", validate=False)["model_config"]["num_layers"] == 2.0


@pytest.mark.parametrize(("field", "value", "message"), [
    ("optimizer", None, "holds no optimizer state (weights only), so training cannot resume"),
    ("optimizer.state", "x", "holds no optimizer state"),
    ("optimizer.state.norm.weight", {"exp_avg": torch.zeros(3)}, "optimizer.state['norm.weight'].exp_avg has shape [3]"),
    ("rng.torch", torch.zeros(3), "rng.torch must be a torch RNG state"),
])
def test_resume_needs_a_matching_optimizer_and_rng(field, value, message) -> None:
    state = good_state()
    if field.startswith("optimizer.state."):
        state["optimizer"]["state"][field.removeprefix("optimizer.state.")] = value
    else:
        state = set_path(state, field, value)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        validate_resume_state(state, Path("x.pt"))


def test_huge_context_refused_before_allocating(tmp_path: Path) -> None:
    # A small file claiming 2**31 positions: the RoPE tables it asks for (~100 GB) are never
    # allocated. The CLI runs under a 6 GB address-space limit (torch itself needs ~3), which such a build would exceed.
    save_checkpoint(_crafted("model_config.context_length", 2**31), tmp_path / "huge.pt")
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30));"
        "import runpy; sys.argv = ['lmkit', 'ckpt', sys.argv[1], sys.argv[2]]; runpy.run_module('lmkit', run_name='__main__')"
    )
    for command in ("inspect", "validate"):
        proc = subprocess.run([sys.executable, "-c", code, command, str(tmp_path / "huge.pt")], capture_output=True, text=True, timeout=120)
        out = proc.stdout + proc.stderr
        assert "Traceback" not in out and "MemoryError" not in out, out
        assert "model_config.context_length 2,147,483,648 is out of range" in out, out
        assert proc.returncode == (2 if command == "inspect" else 1), out


def _resume(path: Path) -> None:
    from lmkit.settings import resolve_settings
    from lmkit.training.trainer import Trainer

    # --resume auto would warn with the same text and then refuse: every checkpoint there is invalid.
    Trainer(resolve_settings(overrides=dict(TINY_MODEL, checkpoint_dir=str(path.parent), resume=str(path), device="cpu", wandb=False), environ={}))


def _loaders():
    from lmkit.app.export import export_checkpoint
    from lmkit.app.inference import load_trained
    from lmkit.app.inspection import inspect_checkpoint, validate_checkpoint

    def validate(path: Path) -> None:
        report = validate_checkpoint(path)
        assert not report.ok
        raise CheckpointError(report.problems[0])

    return {
        "generate": lambda p: load_trained(p, device="cpu", tokenizer="none"),
        "inspect": inspect_checkpoint,
        "export": lambda p: export_checkpoint(p, p.parent / "out"),
        "validate": validate,
        "resume": _resume,
    }


@pytest.mark.parametrize("loader", ["generate", "inspect", "export", "validate", "resume"])
@pytest.mark.parametrize(("field", "value", "message"), [
    ("model_config.num_layers", 2.0, "model_config.num_layers must be a positive integer"),
    ("iter", "many", "iter must be an integer >= 0"),
    ("model_config.context_length", 2**31, "model_config.context_length 2,147,483,648 is out of range"),
])
def test_every_load_path_validates(tmp_path: Path, loader: str, field: str, value, message: str) -> None:
    # The eval command loads through load_trained (generate's path) too.
    path = save_checkpoint(_crafted(field, value), tmp_path / "run" / "latest.pt")
    with pytest.raises(CheckpointError) as e:
        _loaders()[loader](path)
    assert message in str(e.value)
