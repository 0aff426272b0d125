"""The built-in demo: a tiny model on real English text that ships with Python itself.

The corpus is the CPython documentation topics in the standard library's ``pydoc_data`` (about
470 KB of prose and code examples), so the demo needs no download. The tokenizer is trained on
the fly and cached, with the encoded data, under ``$LMKIT_CACHE_DIR`` (default
``~/.cache/lmkit/demo``), keyed by a hash of the text so a Python upgrade re-prepares it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lmkit.settings import Settings

DEMO_VOCAB_SIZE = 2048  # 256 bytes + 1791 merges + <|endoftext|>; a multiple of 64 for the matmuls
EOT = "<|endoftext|>"


def demo_preset() -> dict:
    """Settings of the demo run (flat names; command-line flags still override them).

    About 1.4M parameters; ~400 steps of 16 x 128 tokens fit in ~2 minutes on 2 CPU cores.
    """
    return {
        "vocab_size": DEMO_VOCAB_SIZE, "context_length": 128, "d_model": 128, "num_layers": 4, "num_heads": 4, "d_ff": 384,
        "batch_size": 16, "max_iters": 400, "learning_rate": 3e-3, "min_lr": 3e-4, "warmup_iters": 30, "lr_decay_iters": 400,
        "weight_decay": 0.1, "eval_interval": 100, "eval_iters": 10, "log_interval": 10, "checkpoint_interval": 200,
        "checkpoint_dir": "runs/demo", "wandb": False, "device": "auto", "compile": False,
        # placeholders: prepare_demo_data points these at the cached, encoded corpus
        "train_data_path": "demo-train.bin", "val_data_path": "demo-val.bin",
    }


def demo_documents() -> tuple[list[str], list[str]]:
    """The corpus as (train, validation) documents: every pydoc topic, every 10th held out.

    Holding out whole topics spread over the alphabet keeps validation text like training text
    without any window straddling the two.
    """
    from pydoc_data.topics import topics

    docs = [topics[k].strip() for k in sorted(topics)]
    return [d for i, d in enumerate(docs) if i % 10], [d for i, d in enumerate(docs) if not i % 10]


def cache_dir() -> Path:
    """Where the demo's tokenizer and token files are cached."""
    root = os.environ.get("LMKIT_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lmkit"
    return Path(root) / "demo"


def prepare_demo_data(settings: Settings, notice: Callable[[str], None] = lambda m: None) -> Settings:
    """Train (or reuse) the demo tokenizer, encode the corpus, and point the settings at it.

    Returns:
        A copy of ``settings`` with ``train_data_path``, ``val_data_path`` and ``tokenizer_dir`` set.
    """
    from lmkit.data.tokens import TokenFileMeta, dtype_for_vocab, write_tokens
    from lmkit.tokenizer import Tokenizer, train_bpe

    train_docs, val_docs = demo_documents()
    sep = f"\n{EOT}\n"  # no token spans two documents
    texts = {"train": sep.join(train_docs), "val": sep.join(val_docs)}
    digest = hashlib.sha256("".join(texts.values()).encode()).hexdigest()[:12]
    root = cache_dir() / f"{digest}-v{DEMO_VOCAB_SIZE}"
    tok_dir, train_bin, val_bin = root / "tokenizer", root / "train.bin", root / "val.bin"
    if not (val_bin.is_file() and (tok_dir / "tokenizer.json").is_file()):
        root.mkdir(parents=True, exist_ok=True)
        corpus = root / "train.txt"
        corpus.write_text(texts["train"], encoding="utf-8")
        size_kb = len(texts["train"].encode()) / 1e3
        notice(f"demo: training a {DEMO_VOCAB_SIZE}-token BPE tokenizer on {size_kb:.0f} KB of Python documentation (once; cached in {root})")
        vocab, merges = train_bpe(corpus, DEMO_VOCAB_SIZE, [EOT])
        tok = Tokenizer(vocab, merges, [EOT])
        tok.save(tok_dir, force=True)  # our own cache: a tokenizer left by an interrupted demo is replaced
        corpus.unlink(missing_ok=True)
        for path, text in ((train_bin, texts["train"]), (val_bin, texts["val"])):
            ids = np.asarray(tok.encode(text), dtype=dtype_for_vocab(DEMO_VOCAB_SIZE))
            meta = TokenFileMeta(
                dtype=str(ids.dtype), num_tokens=len(ids), vocab_size=len(vocab), tokenizer_hash=tok.hash,
                tokenizer_dir=str(tok_dir.resolve()), source="pydoc_data.topics", source_bytes=len(text.encode()),
            )
            write_tokens(path, ids, meta)
    data = settings.data.model_copy(update={"train_data_path": train_bin, "val_data_path": val_bin, "tokenizer_dir": tok_dir})
    return settings.model_copy(update={"data": data})
