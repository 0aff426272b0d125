"""Encoding speed: lmkit's FastEncoder vs tiktoken built from the same merges, same threads, same ids.

Contenders, on one corpus of real documents (``benchmarks/corpus.py``: the standard library,
site-packages and docs of this machine, as JSON Lines):

1. tiktoken, an ``Encoding`` built from the tokenizer's merges and GPT-2's pattern, encoding
   the documents with ``encode_ordinary_batch(docs, num_threads=N)`` the way a user would
   (``encode_batch(..., allowed_special="all")`` when the tokenizer has special tokens, so
   both treat ``<|endoftext|>`` in text alike);
2. lmkit's ``FastEncoder`` through ``encode_blocks`` with N threads, each document cut into
   blocks of at most ``--block-mb`` at safe points (``pretokenize.safe_cut``);
3. with ``--cli``: ``lmkit tokenize encode`` on the JSONL files in a subprocess, timed from
   launch (start-up included) to exit, plus the time to its first output line.

Documents are read into memory first; (1) and (2) time the encoding only. All ids are checked
identical (the CLI's with one EOT id after each document when its output records one), and
lmkit's pure-Python ``Tokenizer.encode`` is checked on the first ``--ref-mb`` of documents.
Ratios are of this run's own numbers: the dev box is shared, so absolute MB/s move between runs.

    uv run python benchmarks/encode_speed.py --mb 150 --threads 16 [--cli] [--cli-args '...']
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus

from lmkit.tokenizer import Tokenizer
from lmkit.tokenizer.fast import FastEncoder, encode_blocks
from lmkit.tokenizer.pretokenize import GPT2_PATTERN, safe_cut

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_documents(paths: list[Path]) -> list[str]:
    docs = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            docs.extend(json.loads(line)["text"] for line in f)
    return docs


def tiktoken_encoding(tok: Tokenizer):
    """tiktoken built from the tokenizer's merges, ranks = lmkit ids (as GPT-2's files give them)."""
    import tiktoken

    ranks = {bytes([b]): tok._id_of[bytes([b])] for b in range(256)}
    for left, right in tok.merges:
        ranks.setdefault(left + right, tok._id_of[left + right])
    merge_ids = [ranks[a + b] for a, b in tok.merges]
    if merge_ids != sorted(merge_ids):
        raise SystemExit("this tokenizer's merge ids are not in merge order; tiktoken needs ranks that are")
    specials = {s: tok.token_id(s) for s in tok.special_tokens}
    return tiktoken.Encoding("bench", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=specials)


def blocks_of(docs: list[str], block_bytes: int, specials: list[bytes]):
    """``(doc index, text)`` pieces: whole documents, big ones cut at safe points."""
    for n, doc in enumerate(docs):
        if len(doc) <= block_bytes // 4 or len(doc.encode("utf-8")) <= block_bytes:
            yield n, doc
            continue
        raw = doc.encode("utf-8")
        while len(raw) > block_bytes:
            cut = safe_cut(raw, specials, block_bytes) or len(raw)
            yield n, raw[:cut].decode("utf-8")
            raw = raw[cut:]
        if raw:
            yield n, raw.decode("utf-8")


def run_tiktoken(enc, docs: list[str], threads: int, specials: bool) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    if specials:
        out = enc.encode_batch(docs, num_threads=threads, allowed_special="all")
    else:
        out = enc.encode_ordinary_batch(docs, num_threads=threads)
    seconds = time.perf_counter() - start
    return seconds, np.concatenate([np.asarray(ids, dtype=np.uint32) for ids in out])


def run_fast(encoder: FastEncoder, docs: list[str], threads: int, block_bytes: int,
             specials: list[bytes]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    parts = [ids for _, ids in encode_blocks(encoder, blocks_of(docs, block_bytes, specials), threads,
                                             key=lambda block: block[1])]
    seconds = time.perf_counter() - start
    return seconds, np.concatenate(parts)


def run_cli(corpus_dir: Path, tok: Tokenizer, extra: list[str], out: Path | None = None) -> tuple[float, float, np.ndarray, int | None]:
    """``lmkit tokenize encode`` in a subprocess: (wall s, s to first output, ids, eot id)."""
    work = out.parent if out is not None else Path(tempfile.mkdtemp(prefix="lmkit-encode-bench-"))
    if not (work / "tok").is_dir():  # one tokenizer folder for compared runs: its path is recorded
        tok.save(work / "tok")
    out = out or work / "out"
    cmd = [sys.executable, "-m", "lmkit", "tokenize", "encode", "--input", str(corpus_dir / "*.jsonl"),
           "--tokenizer", str(work / "tok"), "--output", str(out), *extra]
    print("  $", " ".join(shlex.quote(c) for c in cmd))
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)
    first = None
    tail = b""
    while chunk := proc.stdout.read(1):
        if first is None:
            first = time.perf_counter() - start
        tail = (tail + chunk + proc.stdout.read(4096))[-4000:]
    code = proc.wait()
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"lmkit tokenize encode failed ({code}):\n{tail.decode(errors='replace')}")
    return wall, first if first is not None else wall, *read_output(out)


def read_output(out: Path) -> tuple[np.ndarray, int | None]:
    """The ids an encode wrote (a manifest's shards, or single .bin files), and its EOT id."""
    metas = sorted(out.glob("*.json"))
    manifests = [m for m in metas if json.loads(m.read_text()).get("format") == "lmkit-dataset"]
    parts, eot = [], None
    if manifests:
        for m in manifests:
            info = json.loads(m.read_text())
            eot = info.get("eot_id")
            for shard in info["shards"]:
                parts.append(np.fromfile(m.parent / shard["file"], dtype=info["dtype"]))
    else:
        for m in metas:
            info = json.loads(m.read_text())
            eot = info.get("eot_id", eot)
            parts.append(np.fromfile(m.with_suffix(".bin"), dtype=info["dtype"]))
    return np.concatenate(parts).astype(np.uint32), eot


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=150, help="corpus size (MB of text)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--corpus-dir", type=Path, default=Path(tempfile.gettempdir()) / "lmkit-bench-corpus")
    ap.add_argument("--vocab", type=Path, default=DATA / "gpt2_vocab.json")
    ap.add_argument("--merges", type=Path, default=DATA / "gpt2_merges.txt")
    ap.add_argument("--block-mb", type=float, default=1.0)
    ap.add_argument("--ref-mb", type=float, default=2.0, help="MB checked against Tokenizer.encode")
    ap.add_argument("--cli", action="store_true", help="also time `lmkit tokenize encode` (needs #21's DS part)")
    ap.add_argument("--cli-args", default="", help="extra arguments for the CLI, e.g. '--threads 16'")
    ap.add_argument("--cli-compare", action="store_true",
                    help="also run the CLI with --parallel threads and check every output file is byte-identical")
    ap.add_argument("--skip-single", action="store_true", help="time --threads only, not also 1 thread (a shorter run)")
    args = ap.parse_args()

    paths = corpus.build(args.corpus_dir / f"{args.mb:g}mb", args.mb, "jsonl")
    docs = load_documents(paths)
    mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    tok = Tokenizer.from_files(args.vocab, args.merges)
    print(f"corpus: {len(docs):,} documents, {mb:.1f} MB of text; tokenizer {args.merges} "
          f"({tok.vocab_size:,} ids, specials {tok.special_tokens}); {args.threads} threads")

    start = time.perf_counter()
    encoder = FastEncoder.build(tok)
    build_s = time.perf_counter() - start
    if encoder is None:
        raise SystemExit("FastEncoder.build returned None for this tokenizer (see its debug log)")
    enc = tiktoken_encoding(tok)
    specials = [s.encode() for s in tok.special_tokens]
    block = int(args.block_mb * 1e6)

    rows = []
    for threads in sorted({args.threads} if args.skip_single else {1, args.threads}):
        tt_s, tt_ids = run_tiktoken(enc, docs, threads, bool(tok.special_tokens))
        lm_s, lm_ids = run_fast(encoder, docs, threads, block, specials)
        if not np.array_equal(tt_ids, lm_ids):
            bad = int(np.flatnonzero(tt_ids[:len(lm_ids)] != lm_ids[:len(tt_ids)])[:1].tolist() or [min(len(tt_ids), len(lm_ids))])
            raise SystemExit(f"ids differ at {bad} ({len(tt_ids):,} tiktoken vs {len(lm_ids):,} FastEncoder)")
        rows.append((threads, tt_s, lm_s))
        del tt_ids
    ids = lm_ids
    print(f"FastEncoder.build: {build_s:.2f} s; {len(ids):,} ids, identical between tiktoken and FastEncoder")

    # The reference on a prefix of the documents (it runs at a few MB/s).
    taken, total = [], 0
    for d in docs:
        if total >= args.ref_mb * 1e6:
            break
        taken.append(d)
        total += len(d.encode("utf-8"))
    ref = np.array([i for d in taken for i in tok.encode(d)], dtype=np.uint32)
    if not np.array_equal(ref, ids[:len(ref)]):
        raise SystemExit("FastEncoder ids differ from Tokenizer.encode on the reference prefix")
    print(f"Tokenizer.encode (pure Python) agrees on the first {total / 1e6:.1f} MB")

    print(f"\n{'threads':>7} {'tiktoken MB/s':>14} {'FastEncoder MB/s':>17} {'ratio':>6}")
    for threads, tt_s, lm_s in rows:
        print(f"{threads:>7} {mb / tt_s:>14.1f} {mb / lm_s:>17.1f} {tt_s / lm_s:>5.2f}x")

    if args.cli:
        cli_out = Path(tempfile.mkdtemp(prefix="lmkit-encode-bench-out-"))
        wall, first, cli_ids, eot = run_cli(paths[0].parent, tok, shlex.split(args.cli_args), cli_out / "a")
        expected = ids
        if eot is not None:
            per_doc = [ids for _, ids in encode_blocks(encoder, docs, args.threads)]
            expected = np.concatenate([np.append(d, np.uint32(eot)) for d in per_doc])
        if not np.array_equal(cli_ids, expected):
            raise SystemExit(f"CLI ids differ ({len(cli_ids):,} vs {len(expected):,} expected, eot {eot})")
        tt_best = min(tt_s for t, tt_s, _ in rows if t == args.threads)
        print(f"\nlmkit tokenize encode: {wall:.2f} s wall incl. start-up ({mb / wall:.1f} MB/s, "
              f"{tt_best / wall:.2f}x tiktoken's encode-only time), first output after {first:.2f} s; "
              f"ids identical (EOT after each document: {eot is not None})")
        if args.cli_compare:
            t_wall, t_first, _, _ = run_cli(paths[0].parent, tok, [*shlex.split(args.cli_args), "--parallel", "threads"], cli_out / "b")
            files = {d: {p.name: p.read_bytes() for p in (cli_out / d).iterdir() if not p.name.endswith(".lock")} for d in "ab"}
            if files["a"] != files["b"]:
                raise SystemExit(f"--parallel threads wrote other files: {sorted(set(files['a'].items()) ^ set(files['b'].items()))[:3]}")
            print(f"lmkit tokenize encode --parallel threads: {t_wall:.2f} s wall ({tt_best / t_wall:.2f}x), first output "
                  f"after {t_first:.2f} s; all {len(files['a'])} output files byte-identical to the run above")


if __name__ == "__main__":
    main()
