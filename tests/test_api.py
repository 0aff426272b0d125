"""lmkit.api: the notebook pipeline writes what the CLI writes, quietly."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import lmkit
from lmkit import api

EOT = "<|endoftext|>"
TEXT = "The quick brown fox jumps over the lazy dog. A stitch in time saves nine. " * 40


def _settings(overrides: dict, **more):
    return api.resolve_settings(overrides={**overrides, **more}, environ={})


def test_train_writes_the_cli_run_directory_quietly(tiny_overrides, capsys):
    result = api.train(_settings(tiny_overrides, max_iters=10, lr_decay_iters=10))
    run_dir = Path(tiny_overrides["checkpoint_dir"])
    assert result.status == "finished" and result.step == 10
    # What `lmkit train` leaves in its run directory (the notebook example plots metrics.jsonl).
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [5, 10]
    assert any("val_loss" in r for r in rows)
    assert (run_dir / "settings.yaml").is_file() and (run_dir / "latest.pt").is_file()
    assert isinstance(api.plot_metrics(run_dir / "metrics.jsonl"), (Path, str))
    # ...but no progress lines on the console: a notebook cell stays quiet.
    captured = capsys.readouterr()
    assert "step 10/10" not in captured.err + captured.out


def test_train_console_sinks_show_plain_progress(tiny_overrides, capsys):
    api.train(_settings(tiny_overrides, max_iters=5, lr_decay_iters=5), console_sinks=True, is_tty=False)
    assert "step 5/5" in capsys.readouterr().err
    assert (Path(tiny_overrides["checkpoint_dir"]) / "metrics.jsonl").is_file()


def test_train_with_explicit_sinks_feeds_only_those(tiny_overrides):
    from lmkit.observe import MultiSink

    api.train(_settings(tiny_overrides, max_iters=4, lr_decay_iters=4, checkpoint_interval=4), MultiSink([]))
    assert not (Path(tiny_overrides["checkpoint_dir"]) / "metrics.jsonl").exists()


def test_tokenizer_encode_train_generate_evaluate(tmp_path: Path, monkeypatch):
    """The README's Python pipeline in miniature: text -> tokenizer -> token files -> train ->
    generate -> eval, with the tokenizer found again through the recorded directory."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.txt").write_text(f"\n{EOT}\n".join([TEXT] * 6), encoding="utf-8")
    (data / "val.txt").write_text(TEXT, encoding="utf-8")

    tok = api.train_tokenizer(data / "train.txt", 300, [EOT])
    assert tok.vocab_size == 300 and EOT in tok.special_tokens
    tok.save(tmp_path / "tok")
    bins = api.encode("tok", "data", "data")
    assert [b.name for b in bins] == ["train.bin", "val.bin"]
    meta = json.loads((data / "train.json").read_text())
    assert Path(meta["tokenizer_dir"]) == (tmp_path / "tok").resolve()

    settings = api.resolve_settings(environ={}, overrides=dict(
        vocab_size=320, context_length=16, d_model=32, num_layers=2, num_heads=4, d_ff=64, batch_size=8,
        max_iters=6, lr_decay_iters=6, warmup_iters=1, eval_interval=6, eval_iters=1, log_interval=3,
        checkpoint_interval=6, train_data_path="data/train.bin", val_data_path="data/val.bin",
        checkpoint_dir="runs/nb", wandb=False, device="cpu", compile=False,
    ))
    result = api.train(settings)
    trained = api.load_trained(result.run_dir, device="cpu")
    assert trained.tokenizer is not None and trained.tokenizer.hash == tok.hash
    text = api.generate(trained, "The quick", max_new_tokens=5, seed=0)  # the continuation
    pieces = list(api.stream(trained, "The quick", max_new_tokens=5, seed=0))
    assert text and "".join(p.text for p in pieces) == text
    ev = api.evaluate(result.run_dir, "data/val.bin", device="cpu")
    assert ev.tokens > 0 and ev.bits_per_byte is not None and ev.bits_per_byte > 0


def test_encode_records_the_given_tokenizer_dir_for_a_tokenizer_object(tmp_path: Path):
    (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")
    tok = api.train_tokenizer(tmp_path / "a.txt", 270)
    (out,) = api.encode(tok, tmp_path / "a.txt", tmp_path / "out", tokenizer_dir=tmp_path / "tok")
    assert json.loads(out.with_suffix(".json").read_text())["tokenizer_dir"] == str((tmp_path / "tok").resolve())


@pytest.mark.parametrize("name", ["train_tokenizer", "encode", "train", "generate", "stream", "evaluate",
                                  "load_trained", "load", "inspect", "validate", "export", "plot_metrics",
                                  "resolve_settings", "launch"])
def test_api_exposes_the_pipeline(name):
    assert name in api.__all__ and callable(getattr(api, name))
    assert getattr(api, name).__doc__


def test_importing_the_api_costs_no_torch_import():
    # The CLI imports lmkit.api for every command; `lmkit tokenize` and `lmkit plot` never build a
    # model, so the API's names load their modules on first use.
    code = "import sys, lmkit.api as api; print('torch' in sys.modules); api.Tokenizer; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        api.nope  # noqa: B018


# The commands that build a model call only the API (plus the CLI's own modules, errors and the
# settings tree it builds flags from).
_THIN_COMMANDS = ["ckpt", "eval", "generate", "train", "plot", "tokenize", "options", "app"]


@pytest.mark.parametrize("module", _THIN_COMMANDS)
def test_cli_calls_only_the_api(module):
    source = (Path(lmkit.__file__).parent / "cli" / f"{module}.py").read_text(encoding="utf-8")
    imported = re.findall(r"^\s*(?:from|import) (lmkit[\w.]*)", source, flags=re.M)
    allowed = ("lmkit", "lmkit.api", "lmkit.errors", "lmkit.settings", "lmkit.bytecode")
    assert [m for m in imported if not (m in allowed or m.startswith("lmkit.cli"))] == []


def test_old_import_paths_still_work():
    # lmkit.inference & co. were the documented notebook API before lmkit/app/ existed.
    from lmkit.app import evaluation, export, inference, inspection
    from lmkit.evaluation import evaluate_checkpoint
    from lmkit.export import export_checkpoint
    from lmkit.inference import generate_text, load_trained, stream
    from lmkit.inspection import inspect_checkpoint, validate_checkpoint

    assert (load_trained, stream, generate_text) == (inference.load_trained, inference.stream, inference.generate_text)
    assert evaluate_checkpoint is evaluation.evaluate_checkpoint and export_checkpoint is export.export_checkpoint
    assert (inspect_checkpoint, validate_checkpoint) == (inspection.inspect_checkpoint, inspection.validate_checkpoint)
