"""``lmkit eval``: loss, perplexity and bits per byte of a checkpoint over a whole token file, or
its scores on lm-evaluation-harness tasks (``--tasks``)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from lmkit.cli.app import LmkitCommand, app
from lmkit.cli.generate import CheckpointOpt, TokenizerDirOpt
from lmkit.errors import ConfigError

DeviceOpt = Annotated[Optional[str], typer.Option("--device", metavar="[auto|cuda|cpu]", help="Where to run; auto picks CUDA when available. Example: --device cpu")]
DtypeOpt = Annotated[
    Optional[str],
    typer.Option("--dtype", metavar="[auto|bfloat16|float32]", help="Compute dtype (weights stay float32): auto = bfloat16 on CUDA, float32 on CPU. Example: --dtype float32"),
]


class _Progress:
    """``progress(done, total)`` as a rich bar on a terminal, else a plain line per 10%, on stderr."""

    def __init__(self) -> None:
        self.bar = self.task = None
        self.shown = -1
        self.started: float | None = None
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("eval tokens"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=True)

    def __enter__(self) -> _Progress:
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar:
            self.bar.stop()

    def __call__(self, done: int, total: int) -> None:
        if self.started is None:
            self.started = time.monotonic()
        if self.bar:
            if self.task is None:
                self.task = self.bar.add_task("eval", total=total)
            self.bar.update(self.task, completed=done)
            return
        tenth = 10 * done // max(total, 1)
        if tenth > self.shown:
            self.shown = tenth
            typer.echo(f"eval: {done:,}/{total:,} tokens ({time.monotonic() - self.started:.1f}s)", err=True)


@app.command(
    "eval",
    cls=LmkitCommand,
    help=(
        "Evaluate a checkpoint on a token file in one deterministic full pass.\n\n"
        "The file is cut into consecutive non-overlapping windows of context_length tokens (not random batches), "
        "so the numbers are the same on every run. Reports loss (nats/token), perplexity, bits per byte (from the "
        "source byte count in the .bin's metadata, so it compares across tokenizers) and tokens evaluated.\n\n"
        "With --tasks instead of --data: scores on lm-evaluation-harness tasks (hellaswag, arc_easy, ... or local "
        "YAML tasks from --include-path), as a table of task, metric, value and standard error; --output writes the "
        "harness's full results JSON. Runs offline: task data come from the HF cache or local files. Needs the eval "
        "extra (uv sync --extra eval).\n\n"
        "Example: lmkit eval --checkpoint runs/demo/latest.pt --data data/val.bin"
    ),
    epilog=(
        "\b\nExamples:\n"
        "  lmkit eval -k runs/demo --data data/val.bin --max-tokens 100000\n"
        "  lmkit eval -k ckpt.pt --data val.bin --json | jq .bits_per_byte\n"
        "  lmkit eval -k runs/demo --tasks hellaswag,arc_easy --limit 500 -o res.json\n"
        "  lmkit eval -k runs/demo --tasks my_task --include-path tasks/ --limit 50"
    ),
)
def eval_cmd(
    checkpoint: CheckpointOpt,
    data: Annotated[Optional[Path], typer.Option("--data", "-d", help="One dataset as `train` accepts it: a manifest or token .json/.bin from `lmkit tokenize encode`, a directory or quoted glob of .bin files, or a text file of token ids (not a mixture: evaluate each source on its own). Example: --data data/web-val.json")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", min=1, max=2**20, help="Windows (--data; default 8) or distinct inputs (--tasks; default 32) per forward pass (memory vs speed; results do not change). Example: --batch-size 16")] = None,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", min=1, max=10**15, help="Evaluate at most this many tokens from the start of the file (whole windows). Example: --max-tokens 1000000")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as one JSON object on stdout (for scripts). Example: --json")] = False,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    tasks: Annotated[Optional[str], typer.Option("--tasks", metavar="<task,...>", help="Score lm-evaluation-harness tasks instead of --data: comma-separated task, group or tag names, or YAML task files. Example: --tasks hellaswag,arc_easy")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="With --tasks: evaluate at most this many documents per task (the first ones). Example: --limit 200")] = None,
    num_fewshot: Annotated[Optional[int], typer.Option("--num-fewshot", help="With --tasks: examples in each prompt (default: the task's own, else 0). Example: --num-fewshot 5")] = None,
    include_path: Annotated[Optional[list[Path]], typer.Option("--include-path", help="With --tasks: a directory of local YAML tasks; repeat for several. Example: --include-path tasks/")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="With --tasks: write the harness's full results JSON here (a directory gets results.json). Example: --output results.json")] = None,
    tokenizer: TokenizerDirOpt = None,
) -> None:
    """Resolve the runtime settings, run ``api.evaluate`` or ``api.evaluate_tasks``, print the numbers (help: see above)."""
    from lmkit import api
    from lmkit.settings import resolve_settings

    _check_modes(data, tasks, max_tokens, limit, num_fewshot, include_path, output)
    rt = resolve_settings(overrides={"device": device, "dtype": dtype}).runtime
    if tasks is not None:
        _eval_tasks(checkpoint, tasks, limit, num_fewshot, batch_size, include_path or [], output, tokenizer, rt, as_json)
        return
    batch_size = 8 if batch_size is None else batch_size
    with _Progress() as progress:
        result = api.evaluate(checkpoint, data, batch_size, max_tokens, device=rt.device, dtype=rt.dtype,
                                     progress=progress, notice=lambda m: typer.echo(f"lmkit: {m}", err=True))
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
        return
    bpb = f"{result.bits_per_byte:.4f}" if result.bits_per_byte is not None else "n/a (the data records no source byte count)"
    typer.echo(f"loss        {result.loss:.4f} nats/token")
    typer.echo(f"perplexity  {result.perplexity:.3f}")
    typer.echo(f"bits/byte   {bpb}")
    typer.echo(f"tokens      {result.tokens:,} ({result.windows:,} windows of {result.context_length}) on {result.device}, {result.dtype}")


# Bounds on the task options (no task has more documents; prompts of more examples cannot fit).
MAX_LIMIT = 10**9
MAX_FEWSHOT = 1000


def _check_modes(data: Path | None, tasks: str | None, max_tokens: int | None, limit: int | None,
                 num_fewshot: int | None, include_path: list[Path] | None, output: Path | None) -> None:
    """Exactly one of --data and --tasks, and each one's options only with it."""
    # Values first: a bad number is named as such whichever mode it came with.
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1 (documents per task), got {limit}; leave it out to evaluate every document")
    if limit is not None and limit > MAX_LIMIT:
        raise ConfigError(f"--limit must be <= {MAX_LIMIT:,} (documents per task), got {limit}; leave it out to evaluate every document")
    if num_fewshot is not None and not 0 <= num_fewshot <= MAX_FEWSHOT:
        raise ConfigError(f"--num-fewshot must be in 0..{MAX_FEWSHOT}, got {num_fewshot}")
    if (data is None) == (tasks is None):
        raise ConfigError("give --data FILE (loss over a token file) or --tasks a,b (harness task scores), not "
                          + ("both" if data is not None else "neither"))
    if data is not None:
        extra = [f for f, v in (("--limit", limit), ("--num-fewshot", num_fewshot), ("--include-path", include_path),
                                ("--output", output)) if v is not None and v != []]
        if extra:
            raise ConfigError(f"{', '.join(extra)}: only with --tasks; with --data use --max-tokens")
    elif max_tokens is not None:
        raise ConfigError("--max-tokens: only with --data; with --tasks use --limit (documents per task)")


def _eval_tasks(checkpoint: Path, tasks: str, limit: int | None, num_fewshot: int | None, batch_size: int | None,
                include_path: list[Path], output: Path | None, tokenizer: Path | None, rt, as_json: bool) -> None:
    """``lmkit eval --tasks``: run ``api.evaluate_tasks`` and print the table (or --json)."""
    from lmkit.api import evaluate_tasks

    names = tasks.split(",")
    typer.echo(f"lmkit: evaluating {checkpoint} on {', '.join(n.strip() for n in names if n.strip()) or '(no tasks)'}", err=True)
    result = evaluate_tasks(checkpoint, names, limit=limit, num_fewshot=num_fewshot,
                            batch_size=32 if batch_size is None else batch_size, include_path=include_path,
                            device=rt.device, dtype=rt.dtype, tokenizer_dir=tokenizer, output=output)
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("Task", "Metric", "Value", "Stderr", title=f"{result.examples:,} examples in {result.seconds:.1f}s")
    for s in result.scores:
        metric = s.metric if s.filter == "none" else f"{s.metric} ({s.filter})"
        table.add_row(s.task, metric, f"{s.value:.4f}", "" if s.stderr is None else f"± {s.stderr:.4f}")
    Console(soft_wrap=False).print(table)
    if result.output is not None:
        typer.echo(f"lmkit: results written to {result.output}", err=True)
