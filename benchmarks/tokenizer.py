"""Tokenizer speed and memory, side by side with HuggingFace ``tokenizers`` and ``tiktoken``.

Training: lmkit's ``train_bpe`` vs ``tokenizers``' BpeTrainer (ByteLevel pretokenizer), same vocab
size and special token. Encoding: lmkit's ``Tokenizer`` (one thread, and ``encode_corpus`` over
all cores) vs a ``tiktoken.Encoding`` built from the very same merges, single thread.

Inputs: tinyshakespeare (1.1 MB) and a ~50 MB corpus built at run time in a temp dir from
tinyshakespeare + corpus.en copies separated by ``<|endoftext|>``. Because it repeats the same
text, it has the small corpus's distinct pretokens: it measures throughput, not vocabulary growth.

Every measurement runs in a fresh process, so peak RSS (``ru_maxrss``) is that job's alone
(lmkit's worker processes are not included; each holds one chunk's pretoken counts).

Usage: uv run python benchmarks/tokenizer.py [--quick] [--vocab-size 10000]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import resource
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPECIAL = "<|endoftext|>"


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _train_lmkit(path: str, vocab_size: int) -> tuple[float, float, tuple]:
    from lmkit.tokenizer import train_bpe

    start = time.perf_counter()
    vocab, merges = train_bpe(path, vocab_size, [SPECIAL])
    return time.perf_counter() - start, _peak_mb(), (vocab, merges)


def _train_hf(path: str, vocab_size: int) -> tuple[float, float, int]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[SPECIAL], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    start = time.perf_counter()
    tok.train([path], trainer)
    return time.perf_counter() - start, _peak_mb(), tok.get_vocab_size()


def _tiktoken(vocab: dict[int, bytes]):
    import tiktoken

    from lmkit.tokenizer.pretokenize import GPT2_PATTERN

    special_id = max(vocab)
    # lmkit's ids are merge ranks (bytes 0..255, then merges in order): exactly tiktoken's ranks.
    ranks = {token: i for i, token in vocab.items() if i != special_id}
    return tiktoken.Encoding("lmkit-bench", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={SPECIAL: special_id})


def _encode_tiktoken(path: str, vocab: dict[int, bytes]) -> tuple[float, float, int]:
    enc = _tiktoken(vocab)
    text = Path(path).read_text(encoding="utf-8")
    start = time.perf_counter()
    n = len(enc.encode(text, allowed_special="all"))
    return time.perf_counter() - start, _peak_mb(), n


def _encode_lmkit_1thread(path: str, vocab: dict[int, bytes], merges: list) -> tuple[float, float, int]:
    from lmkit.tokenizer import Tokenizer

    tok = Tokenizer(vocab, merges)
    text = Path(path).read_text(encoding="utf-8")
    start = time.perf_counter()
    n = len(tok.encode(text))
    return time.perf_counter() - start, _peak_mb(), n


def _encode_lmkit_corpus(path: str, vocab: dict[int, bytes], merges: list, out: str) -> tuple[float, float, int]:
    from lmkit.data.corpus import encode_corpus
    from lmkit.data.tokens import read_meta
    from lmkit.tokenizer import Tokenizer

    tok = Tokenizer(vocab, merges)
    start = time.perf_counter()
    [bin_path] = encode_corpus(tok, Path(path), Path(out))  # default: all cores above 4 MB
    return time.perf_counter() - start, _peak_mb(), read_meta(bin_path).num_tokens


def _isolated(fn, *args):
    """Run ``fn(*args)`` in a fresh process so its peak memory is its own."""
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
        return ex.submit(fn, *args).result()


def build_corpus(directory: Path, target_bytes: int) -> Path:
    """Concatenate tinyshakespeare and corpus.en, separated by the special token, to ~target size."""
    pieces = [(DATA / "tinyshakespeare.txt").read_text(encoding="utf-8"), (DATA / "corpus.en").read_text(encoding="utf-8")]
    path = directory / "big.txt"
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target_bytes:
            for piece in pieces:
                written += f.write(piece + SPECIAL + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a ~10 MB big corpus instead of ~50 MB")
    parser.add_argument("--vocab-size", type=int, default=10000)
    args = parser.parse_args()
    if not (DATA / "tinyshakespeare.txt").is_file():
        raise SystemExit(f"shared data not found at {DATA}")

    with tempfile.TemporaryDirectory() as tmp:
        big = build_corpus(Path(tmp), (10 if args.quick else 50) << 20)
        corpora = [("tinyshakespeare", DATA / "tinyshakespeare.txt"), (f"{big.stat().st_size / 2**20:.0f} MB mix", big)]
        print(f"cores: {os.cpu_count()}, vocab size {args.vocab_size} incl. {SPECIAL}\n")
        rows = []
        for name, path in corpora:
            mb = path.stat().st_size / 1e6
            lm_s, lm_mem, (vocab, merges) = _isolated(_train_lmkit, str(path), args.vocab_size)
            hf_s, hf_mem, hf_vocab = _isolated(_train_hf, str(path), args.vocab_size)
            tt_s, tt_mem, tt_n = _isolated(_encode_tiktoken, str(path), vocab)
            l1_s, l1_mem, l1_n = _isolated(_encode_lmkit_1thread, str(path), vocab, merges)
            lc_s, lc_mem, lc_n = _isolated(_encode_lmkit_corpus, str(path), vocab, merges, tmp)
            if not tt_n == l1_n == lc_n:
                raise SystemExit(f"token counts differ on {name}: tiktoken {tt_n}, lmkit {l1_n}/{lc_n}")
            rows.append((name, mb, lm_s, hf_s, lm_mem, hf_mem, tt_s, l1_s, lc_s, tt_mem, l1_mem, lc_mem, len(vocab), hf_vocab))

        print("Training (wall s, peak RSS MB)")
        print(f"{'corpus':<16} {'MB':>6} {'lmkit s':>8} {'HF s':>8} {'lmkit/HF':>9} {'lmkit MB':>9} {'HF MB':>8} {'vocab lmkit/HF':>15}")
        for r in rows:
            print(f"{r[0]:<16} {r[1]:>6.1f} {r[2]:>8.2f} {r[3]:>8.2f} {r[2] / r[3]:>8.2f}x {r[4]:>9.0f} {r[5]:>8.0f} {r[12]:>7}/{r[13]}")
        print("\nEncoding (MB/s; ratio = lmkit / tiktoken single thread; peak RSS MB)")
        print(f"{'corpus':<16} {'tiktoken':>9} {'lmkit 1T':>9} {'ratio':>6} {'lmkit all':>10} {'ratio':>6} {'tt MB':>6} {'1T MB':>6} {'all MB':>7}")
        for r in rows:
            tt, l1, lc = r[1] / r[6], r[1] / r[7], r[1] / r[8]
            print(f"{r[0]:<16} {tt:>9.1f} {l1:>9.1f} {l1 / tt:>5.2f}x {lc:>10.1f} {lc / tt:>5.2f}x {r[9]:>6.0f} {r[10]:>6.0f} {r[11]:>7.0f}")
        print("\nlmkit 1T: Tokenizer.encode on the whole text in memory (cold pretoken cache).")
        print("lmkit all: encode_corpus streaming the file to .bin (all cores above 4 MB; includes file I/O).")


if __name__ == "__main__":
    main()
