"""``lmkit tokenize``: train a BPE tokenizer, encode corpora to token files, import ids, decode.

Each command parses options, calls one function of the Python API and renders the result;
results go to stdout, progress and diagnostics to stderr.
"""

from __future__ import annotations

import contextlib
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from lmkit.cli.app import LmkitCommand, app
from lmkit.errors import LmkitError, TokenizerError
from lmkit.settings import MAX_VOCAB

tokenize_app = typer.Typer(
    name="tokenize",
    help="Byte-level BPE: train a tokenizer, encode text into token files, import ids, decode.\n\n"
    "Example: lmkit tokenize train --input data/corpus.txt --vocab-size 10000 "
    "--special-token '<|endoftext|>' --output tok/",
    no_args_is_help=True,
)
app.add_typer(tokenize_app, name="tokenize")

# Options several commands share, defined once.
InputOpt = Annotated[Path, typer.Option("--input", "-i", help="A text file, or a directory of *.txt/*.text/*.md files. Example: --input data/")]
OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="Output directory (created if missing). Example: --output data/tokens/")]
SpecialOpt = Annotated[
    Optional[list[str]],
    typer.Option("--special-token", "-s", metavar="<text>", help="A special token, matched whole in text and never merged; repeat for several. Example: --special-token '<|endoftext|>'"),
]
TokenizerOpt = Annotated[Optional[Path], typer.Option("--tokenizer", "-t", help="Tokenizer directory from `lmkit tokenize train`. Example: --tokenizer tok/")]
VocabOpt = Annotated[Optional[Path], typer.Option("--vocab", help="GPT-2 style vocab.json (use with --merges instead of --tokenizer). Example: --vocab gpt2/vocab.json")]
MergesOpt = Annotated[Optional[Path], typer.Option("--merges", help="GPT-2 style merges.txt (use with --vocab). Example: --merges gpt2/merges.txt")]


class Parallel(str, Enum):
    """How ``tokenize encode`` spreads its work over the cores."""

    auto = "auto"
    processes = "processes"
    threads = "threads"


class Errors(str, Enum):
    """How invalid UTF-8 in an input file is handled."""

    strict = "strict"
    replace = "replace"


ErrorsOpt = Annotated[
    Errors,
    typer.Option("--errors", help="Invalid UTF-8 in the input: 'strict' stops with the byte offset, 'replace' writes U+FFFD. Example: --errors replace"),
]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", min=1, max=1024, help="Processes to use (default: all cores for inputs over 4 MB). Example: --workers 4")]


class Progress:
    """Renders ``progress(stage, done, total)`` calls: rich bars on a terminal, else plain lines.

    Plain lines (for logs and CI) are printed at most every 10% per stage.
    """

    UNITS = {"pretokenize": "bytes", "encode": "bytes", "encode (compressed)": "compressed bytes", "split": "bytes", "verify": "bytes",
             "import": "bytes", "merge": "merges"}

    def __init__(self) -> None:
        self.rich = None
        self.tasks: dict[str, int] = {}
        self.printed: dict[str, int] = {}
        self.started = time.monotonic()
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                                       TextColumn, TimeRemainingColumn, TransferSpeedColumn)

            self.rich = RichProgress(
                TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
                TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=False,
            )

    def __enter__(self) -> Progress:
        if self.rich:
            self.rich.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.rich:
            self.rich.stop()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.rich:
            if stage not in self.tasks:
                self.tasks[stage] = self.rich.add_task(stage, total=total)
            self.rich.update(self.tasks[stage], completed=done, total=total)
            return
        tenth = 10 * done // max(total, 1)
        if tenth > self.printed.get(stage, -1) or done == total:
            if self.printed.get(stage) == 10:
                return
            self.printed[stage] = tenth
            elapsed = time.monotonic() - self.started
            typer.echo(f"{stage}: {done:,}/{total:,} {self.UNITS.get(stage, '')} ({elapsed:.1f}s)", err=True)


def _load_tokenizer(tokenizer: Optional[Path], vocab: Optional[Path], merges: Optional[Path],
                    special_tokens: Optional[list[str]]):
    from lmkit import api

    specials = special_tokens or None
    if tokenizer is not None and (vocab or merges):
        raise TokenizerError("give either --tokenizer DIR or --vocab and --merges, not both")
    if tokenizer is not None:
        return api.Tokenizer.from_dir(tokenizer, specials)
    if vocab is not None and merges is not None:
        return api.Tokenizer.from_files(vocab, merges, specials)
    raise TokenizerError("no tokenizer given: pass --tokenizer DIR, or --vocab vocab.json --merges merges.txt")


@tokenize_app.command("train", cls=LmkitCommand)
def train(
    input: Annotated[list[str], typer.Option("--input", "-i", help="A file, a directory (recursive) or a quoted glob; repeat for several. Plain text, JSON Lines, parquet, Arrow or a HuggingFace save_to_disk folder; .gz/.zst/.xz too. Example: --input 'data/**/*.jsonl.zst'")],
    vocab_size: Annotated[int, typer.Option("--vocab-size", "-v", min=1, max=MAX_VOCAB, help="Total vocabulary: 256 bytes + merges + special tokens. Example: --vocab-size 10000")],
    output: OutputOpt,
    special_token: SpecialOpt = None,
    text_key: Annotated[str, typer.Option("--text-key", help="JSON Lines: the key holding the text (dotted for nested, e.g. meta.body); parquet/Arrow: the column. Example: --text-key content")] = "text",
    skip_bad_lines: Annotated[bool, typer.Option("--skip-bad-lines", help="JSON Lines/tables: skip malformed lines, a missing --text-key or a non-string value (counted and reported) instead of stopping. Example: --skip-bad-lines")] = False,
    errors: ErrorsOpt = Errors.strict,
    workers: WorkersOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the tokenizer already in --output (runs and token files that cite its hash will no longer match it). Example: --force")] = False,
) -> None:
    """Train a byte-level BPE tokenizer; writes vocab.json, merges.txt (GPT-2 format) and tokenizer.json.

    Every document (a plain-text file, or a JSON Lines line / table row) is pretokenized on
    its own, so no merge spans two documents; special tokens are never merged. An --output
    that already holds a tokenizer is refused unless --force; the three files are replaced
    together, never one by one.

    Example: lmkit tokenize train --input data/tinyshakespeare.txt --vocab-size 10000 --special-token '<|endoftext|>' --output tok/

    Example: lmkit tokenize train --input 'corpus/**/*.jsonl.gz' --text-key text --vocab-size 32000 --special-token '<|endoftext|>' --output tok/
    """
    from lmkit import api

    with Progress() as progress:
        tok = api.train_and_save_tokenizer(input, vocab_size, output, special_token or [], force=force, workers=workers,
                             errors=errors.value, text_key=text_key, skip_bad_lines=skip_bad_lines,
                             progress=progress, warn=lambda line: typer.echo(line, err=True))
    typer.echo(f"wrote {output}/ (vocab size {tok.vocab_size}, {len(tok.merges)} merges, hash {tok.hash})")


EncodeInputOpt = Annotated[
    list[str],
    typer.Option("--input", "-i", metavar="<path|glob>", help="A file (.txt/.md, .jsonl, .parquet, .arrow; .gz/.zst/.xz too), a directory "
                 "(every such file, recursively), or a quoted glob; repeat for several. Example: --input 'data/**/*.jsonl.zst'"),
]


@tokenize_app.command("encode", cls=LmkitCommand)
def encode(
    input: EncodeInputOpt,
    output: OutputOpt,
    tokenizer: TokenizerOpt = None,
    vocab: VocabOpt = None,
    merges: MergesOpt = None,
    special_token: SpecialOpt = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Dataset name (default: the input file's stem, the input directory's name, else 'corpus'); with a split, NAME-train and NAME-val. Example: --name web")] = None,
    text_key: Annotated[str, typer.Option("--text-key", help="JSON Lines: the key holding the text (dotted for nested: meta.text); parquet/arrow: the column. Example: --text-key content")] = "text",
    eot: Annotated[Optional[str], typer.Option("--eot", help="Special token ending every document (default: <|endoftext|> when the tokenizer has it); plain text is split into documents where it occurs. Example: --eot '<|endoftext|>'")] = None,
    no_eot: Annotated[bool, typer.Option("--no-eot", help="Add no end-of-text id after documents (text keeps its own special tokens). Example: --no-eot")] = False,
    doc_separator: Annotated[Optional[str], typer.Option("--doc-separator", help="Plain text: also start a new document at this string (removed). Example: --doc-separator $'\\n\\n\\n'")] = None,
    shard_tokens: Annotated[int, typer.Option("--shard-tokens", help="Most token ids per shard; bigger datasets become NAME-00000.bin... plus a NAME.json manifest. Example: --shard-tokens 50000000")] = 100_000_000,
    val_fraction: Annotated[Optional[float], typer.Option("--val-fraction", help="Put about this fraction of the documents in NAME-val, chosen by a hash of each document's file and position. Example: --val-fraction 0.01")] = None,
    val_docs: Annotated[Optional[int], typer.Option("--val-docs", help="Put exactly this many documents in NAME-val (instead of --val-fraction). Example: --val-docs 1000")] = None,
    skip_bad_lines: Annotated[bool, typer.Option("--skip-bad-lines", help="JSON Lines: count and skip malformed lines or lines without the text instead of stopping. Example: --skip-bad-lines")] = False,
    create_stats: Annotated[bool, typer.Option("--create-stats", help="Record and print token count, bytes/token and the most frequent tokens. Example: --create-stats")] = False,
    errors: ErrorsOpt = Errors.strict,
    threads: Annotated[Optional[int], typer.Option("--threads", "--workers", min=1, max=1024, help="Encoding threads (default: all cores; --workers is the old name). Example: --threads 8")] = None,
    parallel: Annotated[Parallel, typer.Option("--parallel", help="processes: --threads worker processes each read, parse and encode their own part of the input (uncompressed JSON Lines by byte ranges, other files whole); threads: one thread reads, --threads threads encode; auto: processes for 4 MB of input or more on 3 threads or more. The output is the same. Example: --parallel processes")] = Parallel.auto,
) -> None:
    """Encode text into a dataset: token ids (NAME.bin, or shards plus a NAME.json manifest), metadata and a document index.

    Run again with the same arguments after an interruption: complete shards are kept.

    Example: lmkit tokenize encode --tokenizer tok/ --input data/train.txt --output data/ --create-stats

    Example: lmkit tokenize encode -t tok/ -i 'corpus/*.jsonl.gz' -o data/ --name web --val-fraction 0.01
    """
    from lmkit import api

    if no_eot and eot is not None:
        raise LmkitError("give --eot TEXT or --no-eot, not both")
    api.check_layout_options(shard_tokens, val_fraction, val_docs)  # before the tokenizer is loaded
    # Worker processes (where they will encode) start now and import while the tokenizer loads.
    pool = api.start_encode_workers(input, threads=threads, parallel=parallel.value)
    with pool or contextlib.nullcontext():
        tok = _load_tokenizer(tokenizer, vocab, merges, special_token)
        tok_dir = tokenizer if tokenizer is not None else (vocab.parent if vocab is not None else None)
        skipped: dict = {}
        with Progress() as progress:
            outputs = api.encode_corpus(tok, input, output, name=name, tokenizer_dir=tok_dir, text_key=text_key,
                                    eot=False if no_eot else (eot if eot is not None else True), doc_separator=doc_separator,
                                    shard_tokens=shard_tokens, val_fraction=val_fraction, val_docs=val_docs,
                                    skip_bad_lines=skip_bad_lines, create_stats=create_stats, errors=errors.value,
                                    threads=threads, progress=progress, skipped=skipped, parallel=parallel.value,
                                    pool=pool)
    _report(outputs, create_stats)
    for path, counter in skipped.items():
        if line := api.skipped_summary(path, counter):
            typer.echo(line)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _report(outputs: list[Path], create_stats: bool) -> None:
    from lmkit import api

    for out in outputs:
        if out.suffix == ".json":
            m = api.read_manifest(out)
            stats, what = m.stats, f"{m.num_tokens:,} tokens ({m.dtype}), {_count(m.num_documents, 'document')}, {len(m.shards)} shards"
        else:
            meta = api.read_meta(out)
            stats, what = meta.stats, f"{meta.num_tokens:,} tokens ({meta.dtype})"
            if meta.num_documents is not None:
                what += f", {_count(meta.num_documents, 'document')}, 1 shard"
        typer.echo(f"{out}: {what}")
        if create_stats and stats:
            typer.echo(f"  bytes/token {stats['bytes_per_token']}, distinct tokens {stats['distinct_tokens']:,}")
            for t in stats["top_tokens"]:
                typer.echo(f"  {t['id']:>7} {t['count']:>12,}  {t.get('token', '')!r}")


@tokenize_app.command("import-ids", cls=LmkitCommand)
def import_ids(
    input: Annotated[Path, typer.Option("--input", "-i", help="Text file of token ids (below 2**32) separated by spaces, tabs or newlines, or a directory of them. Example: --input data/tokens.txt")],
    output: OutputOpt,
    vocab_size: Annotated[Optional[int], typer.Option("--vocab-size", "-v", min=1, help="Vocabulary size (at most 2**32): ids must be below it; picks uint16/uint32. Example: --vocab-size 50257")] = None,
) -> None:
    """Convert text files of token ids (the old data-prep format) into NAME.bin + NAME.json.

    Example: lmkit tokenize import-ids --input data/tokens.txt --output data/ --vocab-size 50257
    """
    from lmkit import api

    with Progress() as progress:
        outputs = api.import_ids(input, output, vocab_size=vocab_size, progress=progress)
    _report(outputs, False)


@tokenize_app.command("verify", cls=LmkitCommand)
def verify(
    input: Annotated[list[Path], typer.Option("--input", "-i", help="A dataset: a manifest NAME.json, a NAME.bin (or its .json), a directory or a quoted glob of .bin files; repeat for several. Example: --input data/web-train.json")],
) -> None:
    """Check that datasets are intact: every shard present, of its size, with its metadata, and of the sha256 recorded when it was written.

    Training checks sizes and metadata before step 1; this also reads every byte, so it finds a
    shard altered in place. A damaged dataset is repaired by running the same encode again.

    Example: lmkit tokenize verify --input data/web-train.json --input data/web-val.json
    """
    from lmkit import api

    for path in input:
        data = api.open_dataset(path)
        total = sum(s.path.stat().st_size for s in data.shards if s.sha256)
        done = 0
        with Progress() as progress:
            def hashed(n: int) -> None:
                nonlocal done
                done += n
                progress("verify", done, total)

            checked = data.verify(hashed)
        unchecked = len(data.shards) - checked
        note = f"; {unchecked} without a recorded sha256 (older files): sizes and metadata only" if unchecked else ""
        typer.echo(f"{path}: {data.num_tokens:,} tokens in {len(data.shards)} shard(s), {checked} verified by sha256{note}")


@tokenize_app.command("decode", cls=LmkitCommand)
def decode(
    tokenizer: TokenizerOpt = None,
    vocab: VocabOpt = None,
    merges: MergesOpt = None,
    input: Annotated[Optional[Path], typer.Option("--input", "-i", help="A .bin token file or a sharded dataset's manifest .json; default: whitespace-separated ids on stdin. Example: --input data/train.bin")] = None,
) -> None:
    """Decode token ids back to text on stdout.

    Example: lmkit tokenize decode --tokenizer tok/ --input data/train.bin > train.txt
    Example: echo 15496 995 | lmkit tokenize decode --vocab vocab.json --merges merges.txt
    """
    from lmkit import api

    tok = _load_tokenizer(tokenizer, vocab, merges, None)
    # A closed stdin or stdout (`<&-`, `>&-`) is None in Python, not an empty stream.
    if sys.stdout is None:
        raise LmkitError("stdout is closed, so there is nowhere to write the text; redirect it, e.g. > text.txt")
    if input is not None:
        pieces = api.decode_token_file(tok, input)
    elif sys.stdin is None or sys.stdin.closed:
        raise LmkitError("stdin is closed, so there are no ids to decode; pipe ids in (echo 15496 995 | lmkit tokenize decode ...) or pass --input FILE.bin")
    else:
        pieces = tok.decode_chunks(api.parse_ids(sys.stdin, "<stdin>", tok.vocab_size))
    # Bytes, not text: stdout's encoding may not cover every character (LANG=C).
    out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else None
    for piece in pieces:
        if out is not None:
            out.write(piece.encode("utf-8"))
        else:
            sys.stdout.write(piece)
    if out is not None:
        out.flush()
    sys.stdout.flush()
