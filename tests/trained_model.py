"""A tiny trained run with a real tokenizer, for the inference, eval, export and CLI tests.

Imported by those test modules (``tests/`` is on ``sys.path`` because it holds conftest.py);
each builds it once per module in a temporary directory, in about a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

EOT = "<|endoftext|>"
TEXT = (
    "The cat sat on the mat. The dog sat on the log. Caf\u00e9 cr\u00e8me and \U0001f44b waves.\n"
    "A bird sang in the tree; the cat looked up.\n"
)
# rope_theta off its default so the HF export test would catch a theta that is not carried over.
MODEL = dict(vocab_size=320, context_length=32, d_model=32, num_layers=2, num_heads=4, d_ff=64, rope_theta=500.0)


@dataclass
class TinyRun:
    """Paths of a trained tiny run."""

    checkpoint: Path  # latest.pt
    tokenizer_dir: Path
    val_bin: Path  # encoded with the run's tokenizer (has tokenizer_hash and source_bytes)
    root: Path


def make_tiny_run(root: Path, max_iters: int = 30) -> TinyRun:
    """Train a 300-token BPE tokenizer and a 2-layer model on a repetitive text under ``root``."""
    from lmkit.api import resolve_settings, train
    from lmkit.data.tokens import TokenFileMeta, dtype_for_vocab, write_tokens
    from lmkit.tokenizer import Tokenizer, train_bpe

    root.mkdir(parents=True, exist_ok=True)
    docs = [TEXT * 20] * 8
    corpus = root / "corpus.txt"
    corpus.write_text(f"\n{EOT}\n".join(docs), encoding="utf-8")
    vocab, merges = train_bpe(corpus, 300, [EOT])
    tok = Tokenizer(vocab, merges, [EOT])
    tok_dir = root / "tok"
    tok.save(tok_dir)
    paths = {}
    for name, text in (("train", f"\n{EOT}\n".join(docs)), ("val", f"\n{EOT}\n".join(docs[:2]))):
        ids = np.asarray(tok.encode(text), dtype=dtype_for_vocab(tok.vocab_size))
        meta = TokenFileMeta(dtype=str(ids.dtype), num_tokens=0, vocab_size=tok.vocab_size, tokenizer_hash=tok.hash,
                             tokenizer_dir=str(tok_dir.resolve()), source=name, source_bytes=len(text.encode()))
        paths[name] = root / f"{name}.bin"
        write_tokens(paths[name], ids, meta)
    settings = resolve_settings(overrides=dict(
        MODEL, batch_size=8, max_iters=max_iters, learning_rate=1e-2, min_lr=1e-3, warmup_iters=3,
        lr_decay_iters=max_iters, eval_interval=max_iters, eval_iters=1, log_interval=10,
        checkpoint_interval=max_iters, train_data_path=str(paths["train"]), val_data_path=str(paths["val"]),
        checkpoint_dir=str(root / "run"), wandb=False, device="cpu", compile=False, seed=1,
    ))
    train(settings)
    return TinyRun(root / "run" / "latest.pt", tok_dir, paths["val"], root)


def make_other_tokenizer(directory: Path) -> Path:
    """A tokenizer of the same size trained on other text: same vocab size, different hash."""
    from lmkit.tokenizer import Tokenizer, train_bpe

    directory.mkdir(parents=True, exist_ok=True)
    corpus = directory / "other.txt"
    corpus.write_text("zebra quartz jumps over vexed frogs; 12345 67890 " * 50, encoding="utf-8")
    vocab, merges = train_bpe(corpus, 300, [EOT])
    Tokenizer(vocab, merges, [EOT]).save(directory / "tok")
    return directory / "tok"
