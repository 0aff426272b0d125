"""BPE training side by side: ``lmkit tokenize train`` (the CLI a user runs) vs HuggingFace ``tokenizers``.

Both train a byte-level BPE with GPT-2's pretokenizer, the same vocab size and special token, on
the same real corpus (benchmarks/corpus.py: source files, docs and licences found on the
machine), each in its own process with the same number of threads/processes. Reported: wall
seconds, the ratio lmkit / HF, peak RSS of each job's whole process tree (sampled every 50 ms,
workers included), the corpus' distinct pretokens, and how many of the first 1,000 merges agree.
The two libraries break ties between equally frequent pairs differently (lmkit: the greater pair
of byte strings; HF: the pair of smaller ids), so merges agree at first and drift later.

    uv run python benchmarks/bpe_train.py --mb 30                # the 2-core dev box
    uv run python benchmarks/bpe_train.py --mb 500 --threads 16  # the 16-core machine

Both read the corpus as corpus.py writes it. ``--format jsonl`` (default): JSON Lines, one
document per line, in ``--files`` files; lmkit reads them itself, HF gets the same documents
whole from a Python generator (``train_from_iterator``, reading counted in its time), so both
see the same pretokens. ``--format txt``: one file, documents joined by ``<|endoftext|>``; HF
reads text files line by line, so its pretokens never span a newline ("\\n    " indentation
is no pretoken for it) and merges differ more.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus  # noqa: E402  (benchmarks/corpus.py, beside this file)

SPECIAL = "<|endoftext|>"

HF_SCRIPT = """
import json, sys
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
files, fmt, vocab_size, out = sys.argv[1].split("\\n"), sys.argv[2], int(sys.argv[3]), sys.argv[4]
tok = Tokenizer(models.BPE())
# ByteLevel with use_regex=True is GPT-2's pattern over GPT-2's byte-to-unicode alphabet.
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[SPECIAL], show_progress=False,
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=0)

def documents():
    for path in files:
        with open(path, encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)["text"]

if fmt == "jsonl":  # whole documents, as lmkit reads them
    tok.train_from_iterator(documents(), trainer)
else:  # HF reads text files line by line: no pretoken spans a newline
    tok.train(files, trainer)
tok.model.save(out)
print(tok.get_vocab_size())
""".replace("SPECIAL", repr(SPECIAL))


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (Linux /proc)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:")), 0)
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue  # the process ended while we looked
    return total


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, int, str, str]:
    """Run ``cmd``; return (wall seconds, peak RSS bytes of its process tree, stdout, stderr)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{err[-3000:]}")
    return wall, peak[0], out, err


def stage_ends(stderr: str) -> dict[str, float]:
    """Seconds since start at which each stage of lmkit's plain progress lines last reported."""
    ends = {}
    for line in stderr.splitlines():  # "pretokenize: 1,234/5,678 bytes (3.2s)"
        stage, _, rest = line.partition(": ")
        if rest.endswith("s)") and "(" in rest:
            ends[stage] = float(rest.rsplit("(", 1)[1][:-2])
    return ends


def read_merges(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#version")]


def distinct_pretokens(paths: list[Path], workers: int) -> int:
    from lmkit.data.sources import ReadOptions, resolve_inputs
    from lmkit.tokenizer.counting import count_corpus

    counts, _ = count_corpus(resolve_inputs(paths), ReadOptions(), [SPECIAL], workers=workers)
    return len(counts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=30, help="corpus size (MB of text)")
    ap.add_argument("--vocab-size", type=int, default=32000)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="lmkit --workers and RAYON_NUM_THREADS")
    ap.add_argument("--format", choices=["jsonl", "txt"], default="jsonl", help="what lmkit reads")
    ap.add_argument("--files", type=int, default=32, help="JSON Lines files of the corpus")
    ap.add_argument("--corpus-dir", type=Path, default=None, help="where the corpus is built/reused")
    ap.add_argument("--skip-hf", action="store_true")
    args = ap.parse_args()

    cdir = args.corpus_dir or Path(tempfile.gettempdir()) / f"lmkit-bpe-corpus-{args.mb:g}-{args.format}"
    paths = corpus.build(cdir, args.mb, args.format, args.files)
    text_mb = sum(p.stat().st_size for p in paths) / 1e6
    env = {**os.environ, "RAYON_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    print(f"corpus: {len(paths)} {args.format} files, {text_mb:.1f} MB on disk ({cdir}); "
          f"vocab {args.vocab_size:,} incl. {SPECIAL}; {args.threads} threads; {os.cpu_count()} cores", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = Path(tmp) / "tok"
        lm_s, lm_rss, lm_out, lm_err = timed(
            [sys.executable, "-m", "lmkit", "tokenize", "train", *(a for p in paths for a in ("--input", str(p))),
             "--vocab-size", str(args.vocab_size), "--special-token", SPECIAL, "--workers", str(args.threads),
             "--output", str(tok_dir)], env)
        ends = stage_ends(lm_err)
        count_s = ends.get("pretokenize", float("nan"))
        print(f"lmkit: {lm_s:.2f} s (counting pretokens done at {count_s:.1f} s, merges took "
              f"{ends.get('merge', float('nan')) - count_s:.1f} s), peak RSS {lm_rss / 2**20:.0f} MB: {lm_out.strip()}", flush=True)
        lm_merges = read_merges(tok_dir / "merges.txt")
        if args.skip_hf:
            return
        hf_dir = Path(tmp) / "hf"
        hf_dir.mkdir()
        hf_s, hf_rss, hf_out, _ = timed([sys.executable, "-c", HF_SCRIPT, "\n".join(map(str, paths)), args.format,
                                      str(args.vocab_size), str(hf_dir)], env)
        print(f"HF tokenizers: {hf_s:.2f} s, peak RSS {hf_rss / 2**20:.0f} MB (vocab {hf_out.strip()})", flush=True)
        hf_merges = read_merges(hf_dir / "merges.txt")

    n = min(1000, len(lm_merges), len(hf_merges))
    same_place = sum(a == b for a, b in zip(lm_merges[:n], hf_merges[:n]))
    common = len(set(lm_merges[:n]) & set(hf_merges[:n]))
    first_diff = next((i for i, (a, b) in enumerate(zip(lm_merges, hf_merges)) if a != b), n)
    distinct = distinct_pretokens(paths, args.threads)
    print(f"\n| corpus MB | threads | lmkit s | HF s | lmkit / HF | lmkit peak MB | HF peak MB | distinct pretokens | merges |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| {text_mb:.0f} | {args.threads} | {lm_s:.2f} | {hf_s:.2f} | {lm_s / hf_s:.2f}x | {lm_rss / 2**20:.0f} | "
          f"{hf_rss / 2**20:.0f} | {distinct:,} | {len(lm_merges):,} / {len(hf_merges):,} |")
    print(f"\nfirst {n} merges: {same_place} in the same place, {common} in both lists; first difference at merge {first_diff}")


if __name__ == "__main__":
    main()
