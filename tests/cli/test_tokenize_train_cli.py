"""``lmkit tokenize train`` from JSON Lines, several inputs and globs, with bad lines skipped."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from lmkit.cli.app import app
from lmkit.tokenizer import Tokenizer, train_bpe

DOCS = ["the cat sat on the mat", "a dog, a log; the fog", "def f(x):\n    return x + 1\n"] * 20


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def _jsonl(path, docs, key="content"):
    path.write_text("".join(json.dumps({key: d}) + "\n" for d in docs), encoding="utf-8")
    return path


def test_train_from_jsonl_files_and_a_glob_with_text_key(tmp_path):
    _jsonl(tmp_path / "a.jsonl", DOCS[:30])
    (tmp_path / "more").mkdir()
    _jsonl(tmp_path / "more" / "b.jsonl", DOCS[30:])
    result = run("tokenize", "train", "--input", str(tmp_path / "a.jsonl"), "--input", str(tmp_path / "more" / "*.jsonl"),
                 "--text-key", "content", "--vocab-size", "300", "-s", "<|endoftext|>", "-o", str(tmp_path / "tok"))
    assert result.exit_code == 0, result.output
    tok = Tokenizer.from_dir(tmp_path / "tok")
    docs_file = tmp_path / "docs.jsonl"
    _jsonl(docs_file, DOCS, key="text")
    assert tok.merges == train_bpe(docs_file, 300, ["<|endoftext|>"])[1]


def test_bad_line_is_one_error_or_skipped_with_a_note(tmp_path):
    path = _jsonl(tmp_path / "a.jsonl", DOCS)
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"content": 3}\n')
    argv = ["tokenize", "train", "-i", str(path), "--text-key", "content", "-v", "290", "-o", str(tmp_path / "tok")]
    result = run(*argv)
    assert result.exit_code == 2
    assert f"a.jsonl:{len(DOCS) + 1}" in result.stderr and "--skip-bad-lines" in result.stderr
    result = run(*argv, "--skip-bad-lines")
    assert result.exit_code == 0, result.output
    assert "skipped 1 bad line in a.jsonl" in result.stderr
