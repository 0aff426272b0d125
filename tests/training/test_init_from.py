"""``lmkit train --init-from CKPT``: a new run from a trained checkpoint's weights."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from tests.conftest import TINY_MODEL, write_token_data
from typer.testing import CliRunner

from lmkit.api import resolve_settings, train
from lmkit.cli.app import app
from lmkit.data.tokens import TokenFileMeta, write_tokens
from lmkit.errors import CheckpointError, ConfigError, TokenizerError
from lmkit.training.checkpoint import file_digest, load_checkpoint
from lmkit.training.trainer import Trainer


@pytest.fixture
def source(tiny_overrides) -> Path:
    """A trained tiny run (10 steps) to start from."""
    train(resolve_settings(overrides=dict(tiny_overrides, max_iters=10, checkpoint_interval=10), environ={}))
    return Path(tiny_overrides["checkpoint_dir"])


def new_run(tiny_overrides, tmp_path: Path, **extra) -> dict:
    """The new run's flat settings: no model fields (they come from the checkpoint)."""
    flat = {k: v for k, v in tiny_overrides.items() if k not in TINY_MODEL}
    return dict(flat, checkpoint_dir=str(tmp_path / "tuned"), max_iters=4, checkpoint_interval=4, eval_interval=4, **extra)


def test_new_run_starts_from_the_weights_at_step_zero(source, tiny_overrides, tmp_path) -> None:
    notices: list[str] = []
    trainer = Trainer(resolve_settings(overrides=new_run(tiny_overrides, tmp_path, init_from=str(source)), environ={}), notice=notices.append)
    src = load_checkpoint(source / "latest.pt")
    assert trainer.step == 0 and trainer.best_val_loss is None
    assert trainer.settings.model.model_dump() == {**src["settings"]["model"]}
    assert all(torch.equal(trainer.model.state_dict()[k], v) for k, v in src["model"].items())
    assert not trainer.optimizer.state  # fresh optimizer: no moments carried over
    assert any("starting from the weights of" in n for n in notices)
    # The first loss of the new run is the source model's loss on the same batch.
    x, y = next(iter(trainer.loader.step_batches(0)))
    with torch.no_grad():
        new_loss = float(trainer.loss_fn(x, y))
        from lmkit.app.inference import load_trained

        ref = load_trained(source, device="cpu", dtype="float32", tokenizer="none").model
        ref_loss = float(F.cross_entropy(ref(x).flatten(0, 1).float(), y.flatten()))
    assert new_loss == pytest.approx(ref_loss, rel=1e-5)
    result = trainer.run()
    assert result.step == 4
    ckpt = load_checkpoint(tmp_path / "tuned" / "latest.pt")
    assert ckpt["iter"] == 4 and ckpt["tokens_seen"] == 4 * 8 * TINY_MODEL["context_length"]
    assert ckpt["init_from"] == {"path": str(source / "latest.pt"), "sha256": file_digest(source / "latest.pt"), "iter": 10}
    from lmkit.app.inspection import inspect_checkpoint

    assert inspect_checkpoint(tmp_path / "tuned").init_from == ckpt["init_from"]
    shown = CliRunner().invoke(app, ["ckpt", "inspect", str(tmp_path / "tuned")], env={"COLUMNS": "300"}).stdout
    assert re.search(rf"started from +{re.escape(str(source / 'latest.pt'))} \(step 10, sha256 {ckpt['init_from']['sha256'][:12]}\)", shown)
    saved = yaml.safe_load((tmp_path / "tuned" / "settings.yaml").read_text())
    assert saved["checkpoint"]["init_from"] == str(source) and ckpt["settings"]["checkpoint"]["init_from"] == str(source)


def test_a_given_model_field_that_differs_is_refused(source, tiny_overrides, tmp_path) -> None:
    same = resolve_settings(overrides=new_run(tiny_overrides, tmp_path, init_from=str(source), d_model=32, num_heads=4), environ={})
    assert Trainer(same).settings.model.d_model == 32
    bad = resolve_settings(overrides=new_run(tiny_overrides, tmp_path, init_from=str(source), d_model=64, num_heads=2), environ={})
    with pytest.raises(ConfigError) as e:
        Trainer(bad)
    assert e.value.problems == [
        f"model.d_model: --d-model 64 differs from 32 in the --init-from checkpoint {source / 'latest.pt'}; leave --d-model out to take the checkpoint's value",
        f"model.num_heads: --num-heads 2 differs from 4 in the --init-from checkpoint {source / 'latest.pt'}; leave --num-heads out to take the checkpoint's value",
    ]


def test_context_length_may_differ(source, tiny_overrides, tmp_path) -> None:
    notices: list[str] = []
    s = resolve_settings(overrides=new_run(tiny_overrides, tmp_path, init_from=str(source / "latest.pt"), context_length=8), environ={})
    trainer = Trainer(s, notice=notices.append)
    assert trainer.settings.model.context_length == 8 and trainer.settings.model.d_model == 32
    assert any("context_length 8 (the checkpoint was trained at 16)" in n for n in notices)


def test_resume_wins_over_init_from(source, tiny_overrides, tmp_path) -> None:
    flat = new_run(tiny_overrides, tmp_path, init_from=str(source))
    train(resolve_settings(overrides=flat, environ={}))
    notices: list[str] = []
    trainer = Trainer(resolve_settings(overrides=dict(flat, max_iters=6), environ={}), notice=notices.append)
    assert trainer.step == 4  # the stopped fine-tune resumes; the source is not loaded again
    assert any("resume wins over --init-from" in n for n in notices)
    assert trainer.init_from["path"] == str(source / "latest.pt")
    trainer.release_run_dir()  # a built Trainer owns its run directory until it runs or lets go
    # Resuming without repeating --init-from still resumes the fine-tune, record kept.
    again = Trainer(resolve_settings(overrides={k: v for k, v in dict(flat, max_iters=6).items() if k != "init_from"}, environ={}))
    assert again.step == 4 and again.settings.checkpoint.init_from == Path(str(source))


def test_init_from_into_a_dir_of_another_run_is_refused(source, tiny_overrides, tmp_path) -> None:
    scratch = dict(tiny_overrides, checkpoint_dir=str(tmp_path / "other"), max_iters=2, checkpoint_interval=2)
    train(resolve_settings(overrides=scratch, environ={}))
    with pytest.raises(ConfigError, match="already holds a run .step 2. that was trained from scratch"):
        Trainer(resolve_settings(overrides=dict(new_run(tiny_overrides, tmp_path, init_from=str(source)), checkpoint_dir=scratch["checkpoint_dir"]), environ={}))


def test_missing_init_checkpoint(tiny_overrides, tmp_path) -> None:
    with pytest.raises(CheckpointError, match="nope: --init-from checkpoint not found"):
        Trainer(resolve_settings(overrides=new_run(tiny_overrides, tmp_path, init_from=str(tmp_path / "nope")), environ={}))


def test_init_from_its_own_run_dir_is_refused(source, tiny_overrides, tmp_path) -> None:
    s = resolve_settings(overrides=dict(tiny_overrides, resume="never", init_from=str(source / "latest.pt")), environ={})
    with pytest.raises(CheckpointError, match="this run's own --checkpoint-dir"):
        Trainer(s)


def test_data_from_another_tokenizer_is_refused(tiny_overrides, tmp_path) -> None:
    def data(name: str, tok_hash: str) -> Path:
        path = write_token_data(tmp_path / name / "train.bin")
        ids = torch.from_numpy(__import__("numpy").fromfile(path, dtype="uint16")).numpy()
        write_tokens(path, ids, TokenFileMeta(dtype="uint16", num_tokens=0, vocab_size=64, tokenizer_hash=tok_hash))
        return path

    first = dict(tiny_overrides, train_data_path=str(data("a", "aaaa")), val_data_path="", max_iters=2, checkpoint_interval=2)
    train(resolve_settings(overrides=first, environ={}))
    flat = new_run(tiny_overrides, tmp_path, init_from=first["checkpoint_dir"], val_data_path="")
    with pytest.raises(TokenizerError, match="encoded with tokenizer bbbb, but --init-from .* was trained with aaaa"):
        Trainer(resolve_settings(overrides=dict(flat, train_data_path=str(data("b", "bbbb"))), environ={}))
    assert Trainer(resolve_settings(overrides=dict(flat, train_data_path=str(data("c", "aaaa"))), environ={})).step == 0


def test_weights_only_checkpoint_cannot_resume_but_can_init(source, tiny_overrides, tmp_path) -> None:
    from lmkit.training.checkpoint import save_checkpoint

    state = load_checkpoint(source / "latest.pt")
    state.pop("optimizer")
    for k in ("format", "version", "lmkit_version"):
        state.pop(k)
    save_checkpoint(state, tmp_path / "weights" / "w.pt")
    with pytest.raises(CheckpointError, match="holds no optimizer state .weights only.*--init-from"):
        Trainer(resolve_settings(overrides=dict(tiny_overrides, resume=str(tmp_path / "weights" / "w.pt")), environ={}))
    assert Trainer(resolve_settings(overrides=new_run(tiny_overrides, tmp_path, init_from=str(tmp_path / "weights" / "w.pt")), environ={})).step == 0


def test_cli_flag_and_one_line_refusal(source, tiny_overrides, tmp_path) -> None:
    runner = CliRunner()
    assert "--init-from" in runner.invoke(app, ["train", "--help"], terminal_width=200).stdout
    flat = new_run(tiny_overrides, tmp_path, init_from=str(source), d_ff=128)
    args = ["train", "--dashboard", "plain"]
    for k, v in flat.items():
        args += [f"--no-{k}".replace("_", "-")] if v is False else [f"--{k}".replace("_", "-"), str(v)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("lmkit: error: model.d_ff: --d-ff 128 differs from 64 in the --init-from checkpoint"), result.stderr
