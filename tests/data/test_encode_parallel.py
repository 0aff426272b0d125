"""Worker processes that read their own input (lmkit.data.parallel) write what the threads write.

Every test encodes the same corpus with ``parallel="threads"`` and ``parallel="processes"`` and
compares the output folders file by file, bytes included: shards, ``.idx``, metadata, manifests.
Ranges are made tiny (``MIN_RANGE``) so every JSON Lines file is cut into several.
"""

from __future__ import annotations

import gzip
import itertools
import json
from collections import Counter

import pytest

from lmkit.data import parallel, shards
from lmkit.data.encode import encode_corpus
from lmkit.errors import DataError
from lmkit.tokenizer import Tokenizer, train_bpe

EOT = "<|endoftext|>"
DOCS = [f"Doc {i}: the cat {'sat ' * (i % 9)}on mat {i * 7}. Ünïcödé 👋{' ' + EOT + ' inner' if i % 11 == 3 else ''}"
        for i in range(120)]


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("train") / "t.txt"
    path.write_text(EOT.join(DOCS) * 2, encoding="utf-8")
    return Tokenizer(*train_bpe(path, 300, [EOT]))


@pytest.fixture(autouse=True)
def small_ranges(monkeypatch):
    monkeypatch.setattr(parallel, "MIN_RANGE", 300)  # planned in this process: a few lines a range


def _jsonl(path, docs, bad: dict[int, str] | None = None, blank_every: int = 0):
    lines = []
    for i, d in enumerate(docs):
        if bad and i in bad:
            lines.append(bad[i])
        lines.append(json.dumps({"text": d, "n": i}))
        if blank_every and i % blank_every == 0:
            lines.append("   ")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _corpus(tmp_path):
    """Three uncompressed JSON Lines files (one without a last newline), a .gz one, a text file."""
    root = tmp_path / "in"
    root.mkdir()
    a = _jsonl(root / "a.jsonl", DOCS[:50], blank_every=7)
    b = _jsonl(root / "b.jsonl", DOCS[50:90])
    b.write_text(b.read_text(encoding="utf-8").rstrip("\n"), encoding="utf-8")
    with gzip.open(root / "c.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps({"text": d}) + "\n" for d in DOCS[90:100]))
    t = root / "d.txt"
    t.write_text(EOT.join(DOCS[100:110]), encoding="utf-8")
    e = _jsonl(root / "e.jsonl", DOCS[110:])
    return [a, b, root / "c.jsonl.gz", t, e]


def _files(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if not p.name.endswith(".lock")}


def _both(tok, inputs, tmp_path, **kw):
    outs = {}
    for mode in ("threads", "processes"):
        skipped: dict = {}
        outs[mode] = encode_corpus(tok, inputs, tmp_path / mode, name="c", parallel=mode, threads=3, skipped=skipped, **kw)
        outs[mode + "-skipped"] = {p.name: dict(c) for p, c in skipped.items() if sum(c.values())}
    return outs


@pytest.mark.parametrize("kw", [{}, {"shard_tokens": 97}, {"shard_tokens": 53, "val_fraction": 0.3},
                                {"shard_tokens": 200, "val_docs": 9}, {"shard_tokens": 41, "eot": False},
                                {"create_stats": True, "shard_tokens": 300}])
def test_processes_write_the_same_files_as_threads(tok, tmp_path, kw):
    inputs = _corpus(tmp_path)
    outs = _both(tok, inputs, tmp_path, **kw)
    assert [p.name for p in outs["threads"]] == [p.name for p in outs["processes"]]
    threads, processes = _files(tmp_path / "threads"), _files(tmp_path / "processes")
    assert threads == processes
    assert len([n for n in threads if n.endswith(".bin")]) > (1 if "shard_tokens" in kw else 0)
    assert not [p for p in (tmp_path / "processes").iterdir() if p.name.startswith(".lmkit-parts")]  # no parts left


def test_documents_spanning_shards_and_long_documents(tok, tmp_path):
    # One document longer than a block (1 MB: encoded in pieces), short ones around it.
    long = DOCS[:5] + [" ".join(DOCS) * 140] + DOCS[5:20]
    src = _jsonl(tmp_path / "long.jsonl", long)
    _both(tok, [src], tmp_path, shard_tokens=50_000)
    assert _files(tmp_path / "threads") == _files(tmp_path / "processes")


def test_skipped_bad_lines_are_counted_alike(tok, tmp_path):
    bad = {3: "{not json", 20: '{"other": 1}', 33: '{"text": 5}', 47: "[1, 2]"}
    src = _jsonl(tmp_path / "bad.jsonl", DOCS[:60], bad=bad)
    outs = _both(tok, [src], tmp_path, skip_bad_lines=True, shard_tokens=80)
    assert _files(tmp_path / "threads") == _files(tmp_path / "processes")
    assert outs["threads-skipped"] == outs["processes-skipped"]
    assert sum(outs["processes-skipped"]["bad.jsonl"].values()) == 4


@pytest.mark.parametrize("at", [4, 61])
def test_an_error_in_a_worker_names_the_file_and_line(tok, tmp_path, at):
    src = _jsonl(tmp_path / "bad.jsonl", DOCS[:70], bad={at: '{"text": "cut off'})
    messages = []
    for mode in ("threads", "processes"):
        with pytest.raises(DataError) as e:
            encode_corpus(tok, src, tmp_path / mode, parallel=mode, threads=3, shard_tokens=60)
        messages.append(str(e.value))
    # line numbers count from the file's start, though a worker began reading in its middle
    assert messages[0] == messages[1] and f"bad.jsonl:{at + 1}:" in messages[1]
    assert not [p for p in (tmp_path / "processes").iterdir() if p.name.startswith(".lmkit-parts")]
    # the shards finished before the bad line stay, each with its metadata; the workers may
    # have finished more of them than the threads (whose reading runs ahead of writing less)
    threads, processes = _files(tmp_path / "threads"), _files(tmp_path / "processes")
    assert all(processes[n] == threads[n] for n in threads) and not [n for n in processes if n.endswith(".tmp")]
    assert all(n[:-4] + ".json" in processes for n in processes if n.endswith(".bin"))


def test_an_interrupted_parallel_encode_resumes(tok, tmp_path, monkeypatch):
    inputs = _corpus(tmp_path)
    ref = encode_corpus(tok, inputs, tmp_path / "ref", name="c", parallel="threads", shard_tokens=45, val_fraction=0.25)
    real = shards.DatasetWriter._close_shard
    calls = Counter()

    def close(self, final):
        if calls["n"] == 7:
            raise KeyboardInterrupt("simulated interruption")
        calls["n"] += 1
        real(self, final)

    with monkeypatch.context() as m:
        m.setattr(shards.DatasetWriter, "_close_shard", close)
        with pytest.raises(KeyboardInterrupt):
            encode_corpus(tok, inputs, tmp_path / "out", name="c", parallel="processes", threads=3, shard_tokens=45, val_fraction=0.25)
    kept = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*-0000*.bin")}
    assert kept and not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".lmkit-parts")]
    out = encode_corpus(tok, inputs, tmp_path / "out", name="c", parallel="processes", threads=3, shard_tokens=45, val_fraction=0.25)
    assert [p.name for p in out] == [p.name for p in ref]
    assert _files(tmp_path / "out") == _files(tmp_path / "ref")
    assert {k: v for k, v in ((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "out").glob("*-0000*.bin")) if k in kept} == kept


def test_line_cuts_end_after_newlines(tmp_path):
    data = b"".join(b"x" * (i % 13) + b"\n" for i in range(500)) + b"tail without newline"
    path = tmp_path / "f.jsonl"
    path.write_bytes(data)
    for step in (1, 7, 100, 10_000):
        cuts = parallel.line_cuts(path, len(data), step)
        assert cuts[0] == 0 and cuts[-1] == len(data) and cuts == sorted(set(cuts))
        assert all(data[c - 1:c] == b"\n" for c in cuts[1:-1])
        counts = [parallel.count_newlines(path, lo, hi) for lo, hi in itertools.pairwise(cuts)]
        assert sum(counts) == data.count(b"\n")
    assert parallel.line_cuts(path, len(data), 10_000) == [0, len(data)]


def test_auto_picks_processes_for_big_inputs_on_three_cores_or_more():
    assert parallel.processes_pay(16, 200 << 20, 4 << 20)
    assert not parallel.processes_pay(2, 200 << 20, 4 << 20)  # two cores: threads measured faster
    assert not parallel.processes_pay(16, 1 << 20, 4 << 20)  # small: starting processes costs more


def test_a_bad_parallel_mode_is_refused(tok, tmp_path):
    src = _jsonl(tmp_path / "a.jsonl", DOCS[:3])
    with pytest.raises(DataError, match="--parallel 'fork' must be one of auto, processes, threads"):
        encode_corpus(tok, src, tmp_path / "o", parallel="fork")


def test_a_script_without_a_main_guard_encodes_once(tok, tmp_path):
    # Spawned workers must not run the caller's script again (it would encode again, recursively).
    import subprocess
    import sys

    tok.save(tmp_path / "tok")
    _jsonl(tmp_path / "a.jsonl", DOCS)
    script = tmp_path / "script.py"
    script.write_text(
        "from lmkit.data.encode import encode_corpus\nfrom lmkit.tokenizer import Tokenizer\n"
        f"tok = Tokenizer.from_dir({str(tmp_path / 'tok')!r})\n"
        f"print('ran', encode_corpus(tok, {str(tmp_path / 'a.jsonl')!r}, {str(tmp_path / 'o')!r}, parallel='processes', threads=3))\n",
        encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("ran") == 1 and (tmp_path / "o" / "a.bin").is_file()


def test_workers_use_the_reference_encoder_where_no_fast_one_is_exact(tok, tmp_path, monkeypatch):
    monkeypatch.setattr(Tokenizer, "fast_encoder", lambda self: None)  # as for merges tiktoken cannot express
    _both(tok, _corpus(tmp_path), tmp_path, shard_tokens=90)
    assert _files(tmp_path / "threads") == _files(tmp_path / "processes")


def test_parts_a_killed_run_left_are_removed(tok, tmp_path):
    out = tmp_path / "processes"
    stale, other = out / ".lmkit-parts-c-k1ll3d", out / ".lmkit-parts-c-val-k1ll3d"
    for d in (stale, other):
        d.mkdir(parents=True)
        (d / "0000000-0.bin").write_bytes(b"\0" * 8)
    encode_corpus(tok, _corpus(tmp_path), out, name="c", parallel="processes", threads=3)
    assert not stale.exists() and other.exists()  # another dataset's (c-val) is not this run's to remove


_SIGTERM_RUN = """
import os, signal, sys
from pathlib import Path
from lmkit.data import parallel, shards
from lmkit.data.encode import encode_corpus
from lmkit.tokenizer import Tokenizer
parallel.MIN_RANGE = 300
tok = Tokenizer({i: bytes([i]) for i in range(256)} | {256: b"<|endoftext|>"}, [], ["<|endoftext|>"])
real = shards.DatasetWriter._close_shard
def close(self, final):
    real(self, final)
    if self.written == 2:
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill` from outside would, mid-encode
shards.DatasetWriter._close_shard = close
try:
    encode_corpus(tok, Path(sys.argv[1]), Path(sys.argv[2]), shard_tokens=500, parallel="processes", threads=3)
except Exception as e:
    print(f"{type(e).__name__}: {e}")
    sys.exit(getattr(e, "exit_code", 3))
"""


def test_sigterm_stops_the_workers_and_keeps_complete_shards(tmp_path):
    import signal
    import subprocess
    import sys

    src = _jsonl(tmp_path / "c.jsonl", DOCS * 3)
    r = subprocess.run([sys.executable, "-c", _SIGTERM_RUN, str(src), str(tmp_path / "o")],
                       check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM" in r.stdout, r.stdout + r.stderr
    names = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert [n for n in names if not n.startswith(".")][:6] == [
        "c-00000.bin", "c-00000.idx", "c-00000.json", "c-00001.bin", "c-00001.idx", "c-00001.json"]
    assert not [n for n in names if n.startswith(".lmkit-parts") or n.endswith(".tmp")]
    tok = Tokenizer({i: bytes([i]) for i in range(256)} | {256: EOT.encode()}, [], [EOT])
    encode_corpus(tok, src, tmp_path / "o", shard_tokens=500, parallel="processes", threads=3)  # the rerun finishes it
    encode_corpus(tok, src, tmp_path / "ref", shard_tokens=500, parallel="threads")
    assert _files(tmp_path / "o") == _files(tmp_path / "ref")


# --- workers started ahead of the tokenizer (encode.start_workers) -------------------------------


def test_workers_started_ahead_write_the_same_files(tok, tmp_path, monkeypatch):
    from lmkit.data.encode import start_workers

    inputs = _corpus(tmp_path)
    ref = encode_corpus(tok, inputs, tmp_path / "threads", name="c", parallel="threads", shard_tokens=60)
    pool = start_workers(inputs, threads=3, parallel="processes")
    assert isinstance(pool, parallel.WorkerPool) and pool.workers == 3

    def no_new_pool(*a, **k):
        raise AssertionError("run_processes started a pool of its own although one was given")

    monkeypatch.setattr(parallel, "WorkerPool", no_new_pool)
    with pool:
        out = encode_corpus(tok, inputs, tmp_path / "processes", name="c", parallel="processes", threads=3,
                            shard_tokens=60, pool=pool)
        assert pool.closed  # by encode_corpus, not only by the with
    assert [p.name for p in out] == [p.name for p in ref]
    assert _files(tmp_path / "threads") == _files(tmp_path / "processes")
    assert not pool.executor._processes  # the processes are gone


def test_start_workers_only_where_processes_will_encode(tok, tmp_path):
    from lmkit.data import encode

    src = _jsonl(tmp_path / "a.jsonl", DOCS)
    assert encode.start_workers(src, threads=3, parallel="threads") is None
    assert encode.start_workers(src, threads=3, parallel="auto") is None  # below PARALLEL_MIN_BYTES
    assert encode.start_workers(src, threads=2, parallel="bogus") is None  # encode_corpus refuses it
    assert encode.start_workers(tmp_path / "missing-*.jsonl", threads=3, parallel="processes") is None
    # A pool is never larger than the tasks the inputs can make: a compressed file is one.
    packed = [tmp_path / "b.jsonl.gz", tmp_path / "c.jsonl.gz"]
    for p in packed:
        p.write_bytes(gzip.compress(src.read_bytes()))
    with encode.start_workers(packed, threads=8, parallel="processes") as two:
        assert two.workers == 2


def test_a_pool_encode_corpus_does_not_use_is_closed(tok, tmp_path):
    from lmkit.data.encode import start_workers

    src = _jsonl(tmp_path / "a.jsonl", DOCS)
    pool = start_workers(src, threads=3, parallel="processes")
    processes = list(pool.executor._processes.values()) if pool.executor._processes else []
    encode_corpus(tok, src, tmp_path / "out", parallel="threads", threads=3, pool=pool)  # threads chosen after all
    assert pool.closed and all(not p.is_alive() for p in processes)
    with start_workers(src, threads=3, parallel="processes") as unused:  # e.g. the tokenizer failed to load
        pass
    assert unused.closed
