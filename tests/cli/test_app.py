"""The CLI boundary (lmkit/cli/app.py): one line per error, help that reads at 80 columns."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import pytest
import typer
from trained_model import make_tiny_run
from typer.testing import CliRunner

from lmkit.cli.app import app

runner = CliRunner()


def _commands(group, path=()):
    """(path, click command) for every command and subcommand, hidden ones included."""
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


COMMANDS = list(_commands(typer.main.get_command(app)))


def _help(path: tuple[str, ...]) -> str:
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS] + [(), ("ckpt",), ("tokenize",)], ids=lambda p: " ".join(p) or "lmkit")
def test_help_fits_80_columns_and_names_every_flag_whole(path):
    text = _help(path)
    assert all(len(line) <= 80 for line in text.splitlines()), max(text.splitlines(), key=len)
    assert "…" not in text
    cmd = dict(COMMANDS).get(path)
    for param in getattr(cmd, "params", []):
        if param.param_type_name == "option" and not param.hidden:
            for opt in [*param.opts, *param.secondary_opts]:
                # Whole, on one line, not split at a hyphen or cut with an ellipsis.
                assert re.search(rf"(^|[\s,/]){re.escape(opt)}($|[\s,=\]])", text, re.M), f"{' '.join(path)}: {opt} missing or cut"


def test_bool_flags_show_no_value_placeholder():
    text = _help(("train",))
    assert "<bool>" not in text
    assert "--activation-checkpointing / --no-activation-checkpointing" in text


def test_generate_help_lists_only_options_it_uses():
    gen, train = _help(("generate",)), _help(("train",))
    for training_only in ("--cuda-graphs", "--fp32-residual", "--batch-size", "--learning-rate", "--checkpoint-dir"):
        assert training_only not in gen
    for used in ("--seed", "--device", "--dtype", "--compile", "--temperature", "--top-p"):
        assert used in gen
    assert "--cuda-graphs" in train and "--fp32-residual" in train and "--temperature" not in train


def _run_boundary(monkeypatch, exc: BaseException):
    """Run `lmkit plot` with its one API call raising ``exc`` (the side-effecting boundary)."""
    from lmkit import api

    def boom(*args, **kwargs):
        raise exc

    monkeypatch.setattr(api, "plot_metrics", boom)
    return runner.invoke(app, ["plot", "somewhere/metrics.jsonl"])


@pytest.mark.parametrize(
    "exc, fragments",
    [
        (MemoryError("Unable to allocate 7.45 GiB for an array with shape (1000000000,)"), ["out of memory", "7.45 GiB"]),
        (MemoryError(), ["out of memory: an allocation failed"]),
        (OSError(errno.ENOSPC, "No space left on device"), ["No space left on device [ENOSPC]", "free some disk space"]),
        (OSError(errno.EACCES, "Permission denied", "/runs/x/latest.pt"), ["Permission denied [EACCES]: /runs/x/latest.pt"]),
        (OSError(errno.EXDEV, "Invalid cross-device link", "a.tmp", None, "b"), ["[EXDEV]: a.tmp -> b"]),
        (OSError("a message with no errno"), ["a message with no errno"]),
    ],
)
def test_memory_and_os_errors_are_one_line(monkeypatch, exc, fragments):
    result = _run_boundary(monkeypatch, exc)
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("lmkit: error: ") and all(f in line for f in fragments), line


def test_torch_out_of_memory_is_one_line(monkeypatch):
    import torch

    result = _run_boundary(monkeypatch, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"))
    assert result.exit_code == 2 and "Tried to allocate 20.00 GiB" in result.stderr and "Traceback" not in result.stderr


def test_other_runtime_errors_stay_bugs(monkeypatch):
    result = _run_boundary(monkeypatch, RuntimeError("a bug"))
    assert isinstance(result.exception, RuntimeError)  # not swallowed into a user error


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("resume") / "r")


@pytest.mark.parametrize("changes, count", [(["--d-model", "64"], 1), (["--d-model", "64", "--num-layers", "3"], 2)])
def test_resume_refusal_counts_what_it_lists(tiny_run, changes, count):
    run_dir = tiny_run.checkpoint.parent
    saved = run_dir / "settings.yaml"
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    result = runner.invoke(app, ["train", "--config", str(saved), *changes])
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr and lines[0].startswith("lmkit: error: ")
    if count == 1:
        assert len(lines) == 1 and "problems" not in lines[0]
        assert "model.d_model differs from the checkpoint" in lines[0] and f"resuming from {run_dir}" in lines[0]
    else:
        assert lines[0].startswith(f"lmkit: error: {count} problems (resuming from ") and lines[0].endswith(":")
        listed = lines[1:]
        assert len(listed) == count and all(line.startswith("  model.") for line in listed), lines
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before
