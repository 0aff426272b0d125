"""``lmkit tokenize``: train -> encode -> decode end to end, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lmkit.cli.app import app

TEXT = ("It was the best of times, it was the worst of times.<|endoftext|>\n"
        "Café 👋  double  spaces\n\n\tand tabs<|endoftext|>The end.\n") * 30


def run(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A small tokenizer directory trained through the CLI, and the text it was trained on."""
    root = tmp_path_factory.mktemp("cli")
    src = root / "text.txt"
    src.write_text(TEXT, encoding="utf-8")
    result = run("tokenize", "train", "--input", str(src), "--vocab_size", "300",
                 "--special-token", "<|endoftext|>", "--output", str(root / "tok"))
    assert result.exit_code == 0, result.output
    return root / "tok", src


def test_train_encode_decode_round_trip(trained, tmp_path):
    tok_dir, src = trained
    assert sorted(p.name for p in tok_dir.iterdir()) == ["merges.txt", "tokenizer.json", "vocab.json"]
    result = run("tokenize", "encode", "--tokenizer", str(tok_dir), "--input", str(src),
                 "--output", str(tmp_path / "data"), "--create-stats")
    assert result.exit_code == 0, result.output
    assert "bytes/token" in result.stdout and "text.bin" in result.stdout
    assert "documents, 1 shard" in result.stdout
    result = run("tokenize", "decode", "--tokenizer", str(tok_dir), "--input", str(tmp_path / "data" / "text.bin"))
    assert result.exit_code == 0, result.stderr
    # Every document ends with <|endoftext|> (issue #21): the last one gains one.
    assert result.stdout_bytes == src.read_bytes() + b"<|endoftext|>"


def test_decode_ids_from_stdin(trained):
    tok_dir, _ = trained
    ids = " ".join(str(b) for b in b"hi!") + " 299\n"  # bytes are ids 0..255; the special is last
    result = CliRunner().invoke(app, ["tokenize", "decode", "--tokenizer", str(tok_dir)], input=ids)
    assert result.exit_code == 0 and result.stdout == "hi!<|endoftext|>"


def test_gpt2_files_via_vocab_and_merges(shared_data, tmp_path):
    src = tmp_path / "s.txt"
    src.write_text("Hello world<|endoftext|>")
    result = run("tokenize", "encode", "--vocab", str(shared_data / "gpt2_vocab.json"),
                 "--merges", str(shared_data / "gpt2_merges.txt"), "--input", str(src), "--output", str(tmp_path))
    assert result.exit_code == 0, result.output
    from lmkit.data.tokens import open_tokens

    ids, meta = open_tokens(tmp_path / "s.bin")
    assert ids.tolist() == [15496, 995, 50256] and meta.vocab_size == 50257


def test_import_ids(tmp_path):
    (tmp_path / "ids.txt").write_text("1 2 3\n4\n")
    result = run("tokenize", "import-ids", "--input", str(tmp_path / "ids.txt"), "--output", str(tmp_path / "o"),
                 "--vocab-size", "10")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "ids.bin").stat().st_size == 8


def test_real_subprocess_round_trip(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text(TEXT, encoding="utf-8")
    lmkit = [sys.executable, "-m", "lmkit", "tokenize"]
    subprocess.run([*lmkit, "train", "-i", str(src), "-v", "280", "-s", "<|endoftext|>", "-o", str(tmp_path / "tok")],
                   check=True, capture_output=True)
    subprocess.run([*lmkit, "encode", "-t", str(tmp_path / "tok"), "-i", str(src), "-o", str(tmp_path / "d")],
                   check=True, capture_output=True)
    done = subprocess.run([*lmkit, "decode", "-t", str(tmp_path / "tok"), "-i", str(tmp_path / "d" / "in.bin")],
                          check=True, capture_output=True)
    assert done.stdout == src.read_bytes() + b"<|endoftext|>"  # the last document gains its end-of-text
    # stderr is not a terminal here, so progress comes as plain lines
    failed = subprocess.run([*lmkit, "encode", "-t", str(tmp_path / "tok"), "-i", str(tmp_path / "nope.txt"),
                             "-o", str(tmp_path / "d")], capture_output=True, text=True)
    assert failed.returncode == 2 and failed.stderr.startswith("lmkit: error:") and failed.stdout == ""


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _broken_tokenizer(tmp: Path, tok_dir: Path, vocab: str | None = None, merges: str | None = None) -> Path:
    bad = tmp / "badtok"
    bad.mkdir()
    _write(bad / "vocab.json", vocab if vocab is not None else (tok_dir / "vocab.json").read_text(encoding="utf-8"))
    _write(bad / "merges.txt", merges if merges is not None else (tok_dir / "merges.txt").read_text(encoding="utf-8"))
    return bad


# (name, argv builder(tmp, tok_dir, src) -> list, expected message fragment)
BAD_INPUT = [
    ("missing-input", lambda t, k, s: ["train", "-i", str(t / "nope.txt"), "-v", "300", "-o", str(t / "out")],
     "nope.txt: input not found"),
    ("empty-input", lambda t, k, s: ["encode", "-t", str(k), "-i", str(_write(t / "e.txt", "")), "-o", str(t / "out")],
     "input is empty"),
    ("empty-input-train", lambda t, k, s: ["train", "-i", str(_write(t / "e.txt", "")), "-v", "300", "-o", str(t / "out")],
     "input is empty"),
    ("dir-without-text", lambda t, k, s: ["encode", "-t", str(k), "-i", str(_write(t / "d" / "x.bin", b"1").parent), "-o", str(t / "out")],
     "d: directory has no files lmkit reads (.txt .text .md, .jsonl"),
    ("vocab-too-small", lambda t, k, s: ["train", "-i", str(s), "-v", "256", "-s", "<|endoftext|>", "-o", str(t / "out")],
     "at least 257"),
    ("malformed-vocab", lambda t, k, s: ["encode", "-t", str(_broken_tokenizer(t, k, vocab='{"a": 0,\n "b": }')), "-i", str(s), "-o", str(t / "out")],
     "vocab.json:2: malformed JSON"),
    ("malformed-merges", lambda t, k, s: ["encode", "-t", str(_broken_tokenizer(t, k, merges="#version: 0.2\nĠ t\nonlyone\n")), "-i", str(s), "-o", str(t / "out")],
     "merges.txt:3: expected two tokens"),
    ("merge-unknown-token", lambda t, k, s: ["encode", "-t", str(_broken_tokenizer(t, k, merges="#version: 0.2\nqq zz\n")), "-i", str(s), "-o", str(t / "out")],
     "merges.txt:2: 'qq' is not in the vocabulary"),
    ("special-not-in-vocab", lambda t, k, s: ["encode", "-t", str(k), "-s", "<|im_start|>", "-i", str(s), "-o", str(t / "out")],
     "special token '<|im_start|>' is not in the vocabulary"),
    ("not-utf8", lambda t, k, s: ["encode", "-t", str(k), "-i", str(_write(t / "b.txt", b"abc \xc3\x28 x")), "-o", str(t / "out")],
     "byte offset 4 (invalid continuation byte); fix the file or pass --errors replace"),
    ("unwritable-output", lambda t, k, s: ["encode", "-t", str(k), "-i", str(s), "-o", str(_write(t / "file", "x") / "out")],
     "output directory cannot be written"),
    ("unwritable-tokenizer-output", lambda t, k, s: ["train", "-i", str(s), "-v", "260", "-o", str(_write(t / "file", "x") / "out")],
     "cannot write tokenizer files"),
    ("ids-non-integer", lambda t, k, s: ["import-ids", "-i", str(_write(t / "ids.txt", "1 2\n3 four\n")), "-o", str(t / "out")],
     "ids.txt:2: 'four' is not a token id"),
    ("ids-outside-vocab", lambda t, k, s: ["import-ids", "-i", str(_write(t / "ids.txt", "1 2\n3 400\n")), "-o", str(t / "out"), "--vocab-size", "300"],
     "ids.txt:2: token id 400 is outside the vocabulary"),
    ("no-tokenizer", lambda t, k, s: ["encode", "-i", str(s), "-o", str(t / "out")],
     "no tokenizer given"),
    ("vocab-is-a-list", lambda t, k, s: ["decode", "-t", str(_broken_tokenizer(t, k, vocab="[1, 2]")), "-i", str(t / "x.bin")],
     "vocab.json: expected a JSON object mapping tokens to ids, got a JSON list"),
    ("vocab-id-2**40", lambda t, k, s: ["encode", "-t", str(_broken_tokenizer(t, k, vocab=_with_id(k, 2**40))), "-i", str(s), "-o", str(t / "out"), "--create-stats"],
     "has id 1099511627776, outside 0..299"),
    ("meta-version-string", lambda t, k, s: ["encode", "-t", str(_broken_meta(t, k, version="1")), "-i", str(s), "-o", str(t / "out")],
     "tokenizer.json: version must be a positive integer, got '1'"),
    ("hash-mismatch", lambda t, k, s: ["encode", "-t", str(_broken_meta(t, k, merges_drop=1)), "-i", str(s), "-o", str(t / "out")],
     "merges.txt was changed after"),
    ("train-binary-input", lambda t, k, s: ["train", "-i", str(_write(t / "b.txt", bytes(range(256)) * 4)), "-v", "300", "-o", str(t / "out")],
     "b.txt: not valid UTF-8 at byte offset 128"),
    ("train-device-input", lambda t, k, s: ["train", "-i", "/dev/zero", "-v", "300", "-o", str(t / "out")],
     "/dev/zero: not a regular file or directory"),
    ("train-dir-without-text", lambda t, k, s: ["train", "-i", str(_write(t / "d" / "x.bin", b"1").parent), "-v", "300", "-o", str(t / "out")],
     "directory has no files lmkit reads"),
    ("train-huge-vocab", lambda t, k, s: ["train", "-i", str(s), "-v", str(10**20), "-o", str(t / "out")],
     "--vocab-size' / '-v': Input should be less than or equal to 16777216"),
    ("train-single-byte-special", lambda t, k, s: ["train", "-i", str(s), "-v", "300", "-s", "x", "-o", str(t / "out")],
     "special token 'x' is a single byte"),
    ("train-over-a-tokenizer", lambda t, k, s: ["train", "-i", str(s), "-v", "300", "-o", str(k)],
     "already holds a tokenizer (hash sha256:"),
    ("train-into-a-data-dir", lambda t, k, s: ["train", "-i", str(s), "-v", "300", "--force", "-o", str(s.parent)],
     "holds files that are not part of a tokenizer"),
    ("ids-2**32", lambda t, k, s: ["import-ids", "-i", str(_write(t / "ids.txt", "1 2\n3 4294967296\n")), "-o", str(t / "out")],
     "ids.txt:2: token id 4294967296 is too large"),
    ("ids-nbsp-separator", lambda t, k, s: ["import-ids", "-i", str(_write(t / "ids.txt", "1\u00a02\n")), "-o", str(t / "out")],
     "U+00A0 is not a separator"),
    ("ids-fs-separator", lambda t, k, s: ["import-ids", "-i", str(_write(t / "ids.txt", "1\u001c2\n")), "-o", str(t / "out")],
     "U+001C is not a separator"),
    ("ids-vocab-above-2**32", lambda t, k, s: ["import-ids", "-i", str(_write(t / "ids.txt", "1\n")), "-o", str(t / "out"), "--vocab-size", str(2**33)],
     "outside 1..2**32"),
]


def _with_id(tok_dir: Path, new_id: int) -> str:
    vocab = json.loads((tok_dir / "vocab.json").read_text(encoding="utf-8"))
    vocab[max(vocab, key=vocab.get)] = new_id
    return json.dumps(vocab, ensure_ascii=False)


def _broken_meta(tmp: Path, tok_dir: Path, merges_drop: int = 0, **change) -> Path:
    merges = (tok_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    bad = _broken_tokenizer(tmp, tok_dir, merges="\n".join(merges[:len(merges) - merges_drop]) + "\n")
    meta = json.loads((tok_dir / "tokenizer.json").read_text(encoding="utf-8"))
    (bad / "tokenizer.json").write_text(json.dumps({**meta, **change}), encoding="utf-8")
    return bad


@pytest.mark.parametrize(("argv", "message"), [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(trained, tmp_path, argv, message):
    tok_dir, src = trained
    result = run("tokenize", *argv(tmp_path, tok_dir, src))
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if not line.startswith(("pretokenize:", "encode:", "merge:", "import:"))]
    assert len(lines) == 1 and lines[0].startswith("lmkit: error: "), result.stderr
    assert message in lines[0]
    out = tmp_path / "out"
    # Lock files (.NAME.bin.lock) stay by design (lmkit.locking); no output or temp file may.
    assert not out.exists() or [p for p in out.iterdir() if not p.name.endswith(".lock")] == []


def test_every_command_has_an_example_in_its_help():
    for command in ("train", "encode", "import-ids", "decode"):
        result = run("tokenize", command, "--help")
        assert result.exit_code == 0 and "Example:" in result.stdout


def _train(src: Path, out: Path, *extra: str):
    return run("tokenize", "train", "--input", str(src), "--vocab-size", "280", "--output", str(out), *extra)


def test_train_over_an_existing_tokenizer_needs_force(trained, tmp_path, monkeypatch):
    _, src = trained
    out = tmp_path / "tok"
    assert _train(src, out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    from lmkit.tokenizer import train as train_module

    def no_training(*args, **kwargs):
        raise AssertionError("trained although the output is refused")

    monkeypatch.setattr(train_module, "count_corpus", no_training)  # the refusal comes first
    result = run("tokenize", "train", "--input", str(src), "--vocab-size", "290", "--output", str(out))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"lmkit: error: {out}: already holds a tokenizer") and "--force" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    monkeypatch.undo()
    result = run("tokenize", "train", "--input", str(src), "--vocab-size", "290", "--output", str(out), "--force")
    assert result.exit_code == 0, result.output
    assert "vocab size 290" in result.stdout and (out / "vocab.json").read_bytes() != before["vocab.json"]


def test_two_trainings_of_one_output_are_refused(trained, tmp_path):
    from lmkit.locking import lock_output

    _, src = trained
    out = tmp_path / "tok"
    with lock_output(out):  # another `tokenize train` is writing it
        result = _train(src, out)
    assert result.exit_code == 2
    assert f"lmkit: error: {out} is in use by another lmkit process (pid {os.getpid()}" in result.stderr
    assert not out.exists()
    assert _train(src, out).exit_code == 0


def test_decode_with_stdin_or_stdout_closed_is_one_line(trained):
    tok_dir, _ = trained
    cmd = [sys.executable, "-m", "lmkit", "tokenize", "decode", "-t", str(tok_dir)]
    for redirect, message in (("<&-", "stdin is closed"), (">&-", "stdout is closed")):
        done = subprocess.run(["bash", "-c", f'echo 72 105 | "$@" {redirect}', "_", *cmd], capture_output=True, text=True)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("lmkit: error: ") and message in done.stderr and "Traceback" not in done.stderr


def test_encode_refuses_a_second_writer_of_one_output(trained, tmp_path):
    from lmkit.locking import lock_output

    tok_dir, src = trained
    (tmp_path / "out").mkdir()
    with lock_output(tmp_path / "out" / f"{src.stem}.bin"):
        result = run("tokenize", "encode", "-t", str(tok_dir), "-i", str(src), "-o", str(tmp_path / "out"))
    assert result.exit_code == 2 and "is in use by another lmkit process (pid" in result.stderr
    assert [p.name for p in (tmp_path / "out").iterdir() if not p.name.endswith(".lock")] == []


def test_encode_jsonl_into_split_sharded_datasets_and_rerun(trained, tmp_path):
    from lmkit.data.manifest import read_manifest

    tok_dir, _ = trained
    docs = [f"Story {i}: it was the best of times, café {i}." for i in range(12)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[:8]), encoding="utf-8")
    _write(tmp_path / "more" / "b.jsonl", "".join(json.dumps({"text": d}) + "\n" for d in docs[8:]))
    argv = ["tokenize", "encode", "-t", str(tok_dir), "-i", str(tmp_path / "a.jsonl"), "-i", str(tmp_path / "more"),
            "-o", str(tmp_path / "out"), "--name", "web", "--val-docs", "3", "--shard-tokens", "60"]
    result = run(*argv)
    assert result.exit_code == 0, result.output
    train, val = tmp_path / "out" / "web-train.json", tmp_path / "out" / "web-val.json"
    mt = read_manifest(train)
    assert f"{train}: {mt.num_tokens:,} tokens (uint16), 9 documents, {len(mt.shards)} shards" in result.stdout
    assert str(val) in result.stdout and len(mt.shards) > 1
    assert [s.path for s in mt.sources] == [str(tmp_path / "a.jsonl"), str(tmp_path / "more" / "b.jsonl")]
    assert read_manifest(val).num_documents == 3 and sum(s.documents for s in mt.sources) == 9
    again = run(*argv)
    assert again.exit_code == 0 and again.stdout == result.stdout  # all verified and kept


def test_encode_eot_options(trained, tmp_path):
    tok_dir, src = trained
    both = run("tokenize", "encode", "-t", str(tok_dir), "-i", str(src), "-o", str(tmp_path), "--eot", "<|endoftext|>", "--no-eot")
    assert both.exit_code == 2 and "give --eot TEXT or --no-eot, not both" in both.stderr
    bad = run("tokenize", "encode", "-t", str(tok_dir), "-i", str(src), "-o", str(tmp_path), "--eot", "<|x|>")
    assert bad.exit_code == 2 and "--eot '<|x|>' is not a special token of this tokenizer" in bad.stderr
    none = run("tokenize", "encode", "-t", str(tok_dir), "-i", str(src), "-o", str(tmp_path / "o"), "--no-eot")
    assert none.exit_code == 0, none.output
    decoded = run("tokenize", "decode", "-t", str(tok_dir), "-i", str(tmp_path / "o" / "text.bin"))
    assert decoded.stdout_bytes == src.read_bytes()  # one document, nothing added


def test_encode_bad_json_line_then_skip_bad_lines(trained, tmp_path):
    tok_dir, _ = trained
    src = _write(tmp_path / "in" / "c.jsonl", '{"text": "one"}\n{"text": \n{"body": "x"}\n{"text": "two"}\n')
    argv = ["tokenize", "encode", "-t", str(tok_dir), "-i", str(tmp_path / "in" / "*.jsonl"), "-o", str(tmp_path / "out")]
    failed = run(*argv)
    assert failed.exit_code == 2 and f"{src}:2" in failed.stderr and "Traceback" not in failed.stderr
    assert not [p for p in (tmp_path / "out").iterdir() if not p.name.endswith(".lock")]
    result = run(*argv, "--skip-bad-lines")
    assert result.exit_code == 0, result.output
    assert "corpus.bin: " in result.stdout and "2 documents, 1 shard" in result.stdout
    assert "skipped 2 bad lines in c.jsonl: " in result.stdout


def test_verify_finds_a_shard_altered_in_place(trained, tmp_path):
    tok_dir, src = trained
    out = tmp_path / "out"
    result = run("tokenize", "encode", "-t", str(tok_dir), "-i", str(src), "-o", str(out), "--name", "t",
                 "--val-fraction", "0.3", "--doc-separator", "\n", "--shard-tokens", "100")
    assert result.exit_code == 0, result.output
    train, val = out / "t-train.json", out / "t-val.json"
    shards = sorted(out.glob("t-train-*.bin"))
    assert len(shards) > 1
    ok = run("tokenize", "verify", "-i", str(train), "-i", str(val))
    assert ok.exit_code == 0, ok.output
    assert f"{train}: " in ok.stdout and f"in {len(shards)} shard(s), {len(shards)} verified by sha256" in ok.stdout
    n_val = len(list(out.glob("t-val-*.bin"))) or 1
    assert f"{val}: " in ok.stdout and f"in {n_val} shard(s), {n_val} verified by sha256" in ok.stdout
    # A one-shard dataset (NAME.bin + NAME.json) records its sha256 too.
    assert run("tokenize", "encode", "-t", str(tok_dir), "-i", str(src), "-o", str(tmp_path / "one")).exit_code == 0
    one = run("tokenize", "verify", "-i", str(tmp_path / "one" / "text.bin"))
    assert one.exit_code == 0 and "in 1 shard(s), 1 verified by sha256" in one.stdout, one.output
    # Same size, other content: only the hash can tell, and training's start-up checks cannot.
    data = bytearray(shards[1].read_bytes())
    data[0] ^= 1
    shards[1].write_bytes(bytes(data))
    bad = run("tokenize", "verify", "-i", str(train))
    assert bad.exit_code == 2
    assert f"{shards[1].resolve()}: content differs from {train}'s record" in bad.stderr and "Traceback" not in bad.output
    missing = run("tokenize", "verify", "-i", str(out / "nothing.json"))
    assert missing.exit_code == 2 and "nothing.json" in missing.stderr


@pytest.mark.parametrize("mode", ["processes", "threads"])
def test_encode_parallel_modes_write_the_same_dataset(trained, tmp_path, mode, monkeypatch):
    from lmkit.data import parallel

    monkeypatch.setattr(parallel, "MIN_RANGE", 200)  # several byte ranges per file, so workers share one
    tok_dir, _ = trained
    docs = [f"Story {i}: it was the best of times<|endoftext|> café {i}." for i in range(40)]
    _write(tmp_path / "in" / "a.jsonl", "".join(json.dumps({"text": d}) + "\n" for d in docs[:30]))
    _write(tmp_path / "in" / "b.jsonl", '{"text": \n' + "".join(json.dumps({"text": d}) + "\n" for d in docs[30:]))
    outs = {}
    for m in ("threads", mode):
        argv = ["tokenize", "encode", "-t", str(tok_dir), "-i", str(tmp_path / "in"), "-o", str(tmp_path / m),
                "--shard-tokens", "70", "--val-fraction", "0.2", "--threads", "3", "--parallel", m]
        failed = run(*argv)
        assert failed.exit_code == 2 and f"{tmp_path / 'in' / 'b.jsonl'}:1:" in failed.stderr and "Traceback" not in failed.stderr
        result = run(*argv, "--skip-bad-lines")
        assert result.exit_code == 0, result.output
        assert "skipped 1 bad line in b.jsonl: 1 malformed JSON" in result.stdout
        outs[m] = {p.name: p.read_bytes() for p in (tmp_path / m).iterdir() if not p.name.endswith(".lock")}
    assert outs["threads"] == outs[mode] and "in-train.json" in outs[mode]
    bad = run("tokenize", "encode", "-t", str(tok_dir), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "x"), "--parallel", "fork")
    assert bad.exit_code == 2 and "--parallel" in bad.stderr


def test_encode_starts_its_workers_before_loading_the_tokenizer(trained, tmp_path, monkeypatch):
    from lmkit import api

    tok_dir, _ = trained
    src = _write(tmp_path / "in" / "a.jsonl", "".join(json.dumps({"text": f"story {i} café"}) + "\n" for i in range(50)))
    events, pools = [], []
    real_start, real_load, real_encode = api.start_encode_workers, api.Tokenizer.from_dir, api.encode_corpus

    def start(*a, **k):
        pools.append(real_start(*a, **k))
        events.append("start")
        return pools[-1]

    def load(*a, **k):
        events.append("load")
        return real_load(*a, **k)

    def encode(*a, pool=None, **k):
        events.append(("encode", pool is pools[-1]))
        return real_encode(*a, pool=pool, **k)

    monkeypatch.setattr(api, "start_encode_workers", start)
    monkeypatch.setattr(api.Tokenizer, "from_dir", load)
    monkeypatch.setattr(api, "encode_corpus", encode)
    argv = ["tokenize", "encode", "-i", str(src), "-o", str(tmp_path / "out"), "--threads", "3", "--parallel", "processes"]
    result = run(*argv, "-t", str(tok_dir))
    assert result.exit_code == 0, result.output
    assert events == ["start", "load", ("encode", True)] and pools[-1].closed
    # The tokenizer fails to load: the workers started for nothing are ended, and the error is the usual one.
    failed = run(*argv, "-t", str(tmp_path / "no-such-tokenizer"))
    assert failed.exit_code == 2 and "no-such-tokenizer" in failed.stderr and "Traceback" not in failed.output
    assert events[-2:] == ["start", "load"] and pools[-1].closed and not pools[-1].executor._processes
    # Threads encode: nothing is started.
    assert run(*argv[:-1], "threads", "-t", str(tok_dir), "-o", str(tmp_path / "t")).exit_code == 0 and pools[-1] is None
