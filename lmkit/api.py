"""The Python API: what the CLI calls and what notebooks import.

The whole pipeline, as the README's "From Python" section runs it::

    from lmkit import api

    tok = api.train_tokenizer("data/train.txt", 1024, ["<|endoftext|>"])
    tok.save("tok")
    api.encode("tok", "data", "data")               # data/*.txt -> data/NAME.bin + NAME.json + NAME.idx
    result = api.train(api.resolve_settings(overrides={"vocab_size": 1024, "max_iters": 100}))
    api.plot_metrics(result.run_dir / "metrics.jsonl")
    print(api.generate(api.load_trained(result.run_dir), "The", max_new_tokens=50))
    api.evaluate(result.run_dir, "data/val.bin").bits_per_byte
    api.evaluate_tasks(result.run_dir, ["arc_easy"], limit=100).scores   # needs the eval extra

Everything here is either a re-export of the function that does the work or a thin wrapper that
fills in what the CLI would (the tokenizer directory an encode records, the sinks a run writes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from lmkit.data.corpus import encode_corpus
from lmkit.evaluation import EvalResult
from lmkit.evaluation import evaluate_checkpoint as evaluate
from lmkit.harness import TaskResults, evaluate_tasks
from lmkit.inference import Trained, load_trained, stream
from lmkit.inference import generate_text as generate
from lmkit.observe.base import MultiSink
from lmkit.observe.plot import plot_metrics
from lmkit.settings import Settings, resolve_settings, settings_to_yaml
from lmkit.tokenizer import Tokenizer, train_bpe
from lmkit.training.trainer import Trainer, TrainResult

__all__ = [
    "EvalResult", "Settings", "TaskResults", "Tokenizer", "TrainResult", "Trained",
    "encode", "evaluate", "evaluate_tasks", "generate", "load_trained", "plot_metrics", "resolve_settings",
    "settings_to_yaml", "stream", "train", "train_tokenizer",
]


def train_tokenizer(
    input_path: str | Path | Sequence[str | Path],
    vocab_size: int,
    special_tokens: Sequence[str] = (),
    **kwargs,
) -> Tokenizer:
    """Train a byte-level BPE tokenizer on text files, as ``lmkit tokenize train`` does.

    Args:
        input_path: a text file, a directory of text files, or a list of either.
        vocab_size: total vocabulary: 256 bytes + merges + special tokens.
        special_tokens: e.g. ``["<|endoftext|>"]``.
        **kwargs: ``workers``, ``errors``, ``progress``, as for ``lmkit.tokenizer.train_bpe``.

    Returns:
        The ``Tokenizer``; ``tok.save("tok/")`` writes the directory the CLI writes.

    Raises:
        TokenizerError, DataError: as ``train_bpe``.
    """
    vocab, merges = train_bpe(input_path, vocab_size, special_tokens, **kwargs)
    return Tokenizer(vocab, merges, list(special_tokens))


def encode(
    tokenizer: Tokenizer | str | Path,
    input_path: str | Path | Sequence[str | Path],
    output_dir: str | Path,
    *,
    tokenizer_dir: str | Path | None = None,
    per_file: bool | None = None,
    **kwargs,
) -> list[Path]:
    """Encode text into datasets, as ``lmkit tokenize encode`` does.

    Args:
        tokenizer: a tokenizer directory (recorded in the metadata, so that a model trained on
            the files finds its tokenizer for ``generate``) or a ``Tokenizer``.
        input_path: a file, a directory, a glob, or a list of them (see ``encode_corpus``).
        output_dir: where the token files go (created if missing).
        tokenizer_dir: the directory to record when ``tokenizer`` is a ``Tokenizer`` object.
        per_file: encode every input file into its own dataset named after it (``data/train.txt``
            -> ``data/train.bin``). Default: on when ``input_path`` is one directory, which is
            what this function always did with one (``api.encode("tok", "data", "data")``
            writes ``train.bin`` and ``val.bin``); off otherwise: one dataset of all inputs.
        **kwargs: ``name``, ``text_key``, ``eot``, ``shard_tokens``, ``val_fraction``,
            ``create_stats``, ``errors``, ``threads``, ``progress``, ... as for
            ``lmkit.data.encode.encode_corpus``.

    Returns:
        The paths written (``NAME.bin``, or ``NAME.json`` for a sharded dataset), in input order.
    """
    if not isinstance(tokenizer, Tokenizer):
        tokenizer_dir = Path(tokenizer)
        tokenizer = Tokenizer.from_dir(tokenizer_dir)
    tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else None
    inputs = [input_path] if isinstance(input_path, (str, Path)) else list(input_path)
    if per_file is None:
        per_file = len(inputs) == 1 and Path(inputs[0]).is_dir() and "name" not in kwargs
    if not per_file:
        return encode_corpus(tokenizer, inputs, Path(output_dir), tokenizer_dir=tok_dir, **kwargs)
    from lmkit.data.sources import resolve_inputs

    from lmkit.data.encode import default_name
    from lmkit.errors import DataError

    files = [s.path for s in resolve_inputs(inputs)]
    seen: dict[str, Path] = {}
    for f in files:  # two inputs of one name would overwrite each other
        if (n := default_name([f])) in seen:
            raise DataError(f"{f} and {seen[n]} would both be written as dataset {n!r}; rename one, or pass per_file=False")
        seen[n] = f
    outputs: list[Path] = []
    for f in files:
        outputs += encode_corpus(tokenizer, [f], Path(output_dir), tokenizer_dir=tok_dir, **kwargs)
    return outputs


def train(settings: Settings, sinks: MultiSink | None = None, *, console_sinks: bool = False, is_tty: bool | None = None) -> TrainResult:
    """Train a model as ``settings`` describe, writing the run directory ``lmkit train`` writes.

    Checkpoints, ``settings.yaml``, ``metrics.jsonl`` (and W&B when ``settings.logging.wandb``
    is on) go to ``settings.checkpoint.checkpoint_dir`` either way; only the console differs.

    Args:
        settings: resolved settings (see ``resolve_settings``).
        sinks: replace the standard sinks entirely (then only these are fed; for tests and
            custom displays).
        console_sinks: also show progress, as the CLI does: the live dashboard or plain log
            lines, as ``settings.logging.dashboard`` says. Off by default: a notebook cell stays
            quiet and the returned ``TrainResult`` says how the run went.
        is_tty: with ``console_sinks``, force the dashboard (True) or plain lines (False);
            default: detect.

    Returns:
        ``TrainResult`` with the final step, losses and last checkpoint.

    Raises:
        LmkitError subclasses for bad settings, data or checkpoints.
    """
    if sinks is None:
        sinks = _run_sinks(settings, console_sinks, is_tty)
    trainer = Trainer(settings, sinks)
    try:
        return trainer.run()
    finally:
        trainer.dist.close()


def _run_sinks(settings: Settings, console: bool, is_tty: bool | None) -> MultiSink:
    """The sinks of a run: the CLI's (``make_sinks``), minus the console one unless asked."""
    from lmkit.observe import ConsoleSink, Dashboard, make_sinks

    rank0 = int(os.environ.get("RANK", "0")) == 0  # torchrun sets RANK; only rank 0 reports
    sinks = make_sinks(settings.logging, Path(settings.checkpoint.checkpoint_dir), rank0=rank0, is_tty=is_tty)
    if not console:
        # Built and dropped rather than never built: make_sinks stays the one place that decides
        # which files a run writes, and neither console sink does anything before start().
        sinks.sinks = [s for s in sinks.sinks if not isinstance(s, (ConsoleSink, Dashboard))]
    return sinks
