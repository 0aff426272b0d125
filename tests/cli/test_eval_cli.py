"""``lmkit eval`` end to end: the table, --json, progress on stderr, a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from trained_model import make_tiny_run
from typer.testing import CliRunner

from lmkit.cli.app import app
from lmkit.app.evaluation import evaluate_checkpoint


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("eval_cli"))


def test_json_matches_the_api(run) -> None:
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(run.checkpoint), "--data", str(run.val_bin), "--json",
                                      "--batch-size", "3", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    want = evaluate_checkpoint(run.checkpoint, run.val_bin, device="cpu").to_dict()
    assert got.keys() == want.keys()
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6) and got["tokens"] == want["tokens"]
    assert got["bits_per_byte"] == pytest.approx(want["bits_per_byte"], rel=1e-6)
    # Not a terminal: plain progress lines on stderr, ending at 100%.
    assert f"eval: {want['tokens']:,}/{want['tokens']:,} tokens" in result.stderr


def test_table_output_and_max_tokens(run) -> None:
    result = CliRunner().invoke(app, ["eval", "-k", str(run.checkpoint.parent), "-d", str(run.val_bin), "--max-tokens", "100"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["loss", "perplexity", "bits/byte", "tokens"]
    assert lines[3].split()[1] == "96"  # three whole windows of 32


def test_real_subprocess(run) -> None:
    proc = subprocess.run([sys.executable, "-m", "lmkit", "eval", "--checkpoint", str(run.checkpoint), "--data", str(run.val_bin),
                           "--json", "--device", "cpu"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["perplexity"] > 1


def test_help_has_examples() -> None:
    result = CliRunner().invoke(app, ["eval", "--help"])
    assert result.exit_code == 0 and "Example" in result.stdout and "--max-tokens" in result.stdout


def test_text_file_of_ids_and_raw_text(run, tmp_path) -> None:
    from lmkit.data.tokens import open_tokens

    ids, _ = open_tokens(run.val_bin)
    src = tmp_path / "val_ids.txt"
    src.write_text(" ".join(map(str, ids.tolist())))
    result = CliRunner().invoke(app, ["eval", "-k", str(run.checkpoint), "-d", str(src), "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tokens"] == evaluate_checkpoint(run.checkpoint, run.val_bin, device="cpu").tokens
    raw = tmp_path / "raw.txt"
    raw.write_text("Some words.\n")
    result = CliRunner().invoke(app, ["eval", "-k", str(run.checkpoint), "-d", str(raw), "--device", "cpu"])
    assert result.exit_code == 2
    assert result.stderr.startswith("lmkit: error: ") and "encode it with `lmkit tokenize encode" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
