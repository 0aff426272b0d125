"""The Python API: what the CLI calls and what notebooks import.

The whole pipeline, as the README's "From Python" section runs it::

    from lmkit import api

    tok = api.train_tokenizer("data/train.txt", 1024, ["<|endoftext|>"])
    tok.save("tok")
    api.encode("tok", "data", "data")               # data/*.txt -> data/NAME.bin + NAME.json + NAME.idx
    result = api.train(api.resolve_settings(overrides={"vocab_size": 1024, "max_iters": 100}))
    api.plot_metrics(result.run_dir / "metrics.jsonl")
    print(api.generate(api.load(result.run_dir), "The", max_new_tokens=50))
    api.evaluate(result.run_dir, "data/val.bin").bits_per_byte
    api.evaluate_tasks(result.run_dir, ["arc_easy"], limit=100).scores   # needs the eval extra

Everything here is either a name of the function that does the work or a thin wrapper that
fills in what the CLI would (the tokenizer directory an encode records, the sinks a run writes).
The CLI calls only this module (and the settings tree, to build its flags), so a command and a
notebook cell that do the same thing run the same code.

Names are imported on first use, so ``from lmkit import api`` costs no torch import for a
command that never builds a model (``lmkit tokenize``, ``lmkit plot``).

==================  =====================================================  ================
name                what                                                   CLI
==================  =====================================================  ================
train_tokenizer     byte-level BPE on text files -> ``Tokenizer``          tokenize train
encode              text -> token datasets (``NAME.bin`` + ``.json``)      tokenize encode
resolve_settings    defaults < YAML < environment < overrides              every command
train               a run directory: checkpoints, metrics, settings        train
load                a checkpoint (or run dir) + tokenizer -> ``Trained``   generate
generate, stream    text from a ``Trained``, whole or token by token       generate
evaluate            loss, perplexity, bits/byte over held-out tokens       eval
inspect             a checkpoint's summary (every settings section)        ckpt inspect
validate            load, shape, finiteness, forward and tokenizer checks  ckpt validate
export              safetensors or a HuggingFace Llama folder              ckpt export
plot_metrics        loss/LR curves from ``metrics.jsonl``                  plot
==================  =====================================================  ================
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmkit.settings import Settings, resolve_settings, settings_to_yaml  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from lmkit.observe.base import MultiSink
    from lmkit.tokenizer import Tokenizer
    from lmkit.training.trainer import TrainResult

# Public name -> (module, attribute), imported on first access (module ``__getattr__``).
_LAZY: dict[str, tuple[str, str]] = {
    "EvalResult": ("lmkit.app.evaluation", "EvalResult"),
    "evaluate": ("lmkit.app.evaluation", "evaluate_checkpoint"),
    "Trained": ("lmkit.app.inference", "Trained"),
    "Piece": ("lmkit.app.inference", "Piece"),
    "load": ("lmkit.app.inference", "load_trained"),
    "load_trained": ("lmkit.app.inference", "load_trained"),
    "generate": ("lmkit.app.inference", "generate_text"),
    "stream": ("lmkit.app.inference", "stream"),
    "encode_prompt": ("lmkit.app.inference", "encode_prompt"),
    "find_tokenizer": ("lmkit.app.inference", "find_tokenizer"),
    "CheckpointSummary": ("lmkit.app.inspection", "CheckpointSummary"),
    "ValidationReport": ("lmkit.app.inspection", "ValidationReport"),
    "inspect": ("lmkit.app.inspection", "inspect_checkpoint"),
    "validate": ("lmkit.app.inspection", "validate_checkpoint"),
    "export": ("lmkit.app.export", "export_checkpoint"),
    "demo_preset": ("lmkit.app.demo", "demo_preset"),
    "prepare_demo_data": ("lmkit.app.demo", "prepare_demo_data"),
    "plot_metrics": ("lmkit.observe.plot", "plot_metrics"),
    "say": ("lmkit.observe.streams", "say"),
    "open_data": ("lmkit.data.dataset", "open_data"),
    "Tokenizer": ("lmkit.tokenizer", "Tokenizer"),
    "TrainResult": ("lmkit.training.trainer", "TrainResult"),
    "Launch": ("lmkit.training.runtime", "Launch"),
    "launch": ("lmkit.training.runtime", "launch"),
    "TaskResults": ("lmkit.harness", "TaskResults"),
    # What `lmkit tokenize` needs beyond train_tokenizer/encode: the pieces it reports with.
    "train_and_save_tokenizer": ("lmkit.tokenizer.train", "train_and_save"),
    "encode_corpus": ("lmkit.data.corpus", "encode_corpus"),
    "import_ids": ("lmkit.data.corpus", "import_ids"),
    "decode_token_file": ("lmkit.data.corpus", "decode_token_file"),
    "parse_ids": ("lmkit.data.corpus", "parse_ids"),
    "check_layout_options": ("lmkit.data.encode", "check_layout_options"),
    "start_encode_workers": ("lmkit.data.encode", "start_workers"),
    "skipped_summary": ("lmkit.data.sources", "skipped_summary"),
    "read_manifest": ("lmkit.data.manifest", "read_manifest"),
    "read_meta": ("lmkit.data.tokens", "read_meta"),
    "open_dataset": ("lmkit.data.dataset", "open_dataset"),
    "evaluate_tasks": ("lmkit.harness", "evaluate_tasks"),
}

__all__ = sorted([*_LAZY, "Settings", "encode", "resolve_settings", "settings_to_yaml", "train", "train_tokenizer"])


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'lmkit.api' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later look-ups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
    from lmkit.tokenizer import Tokenizer, train_bpe

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
    from lmkit.data.corpus import encode_corpus
    from lmkit.tokenizer import Tokenizer

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
    from lmkit.training.trainer import Trainer

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
    from lmkit.training.runtime import launch

    sinks = make_sinks(settings.logging, Path(settings.checkpoint.checkpoint_dir), rank0=launch().is_main, is_tty=is_tty)
    if not console:
        # Built and dropped rather than never built: make_sinks stays the one place that decides
        # which files a run writes, and neither console sink does anything before start().
        sinks.sinks = [s for s in sinks.sinks if not isinstance(s, (ConsoleSink, Dashboard))]
    return sinks
