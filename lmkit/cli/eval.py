"""``lmkit eval``: loss, perplexity and bits per byte of a checkpoint over a whole token file."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from lmkit.cli.app import LmkitCommand, app
from lmkit.cli.generate import CheckpointOpt

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
        "Example: lmkit eval --checkpoint runs/demo/latest.pt --data data/val.bin"
    ),
    epilog=(
        "\b\nExamples:\n"
        "  lmkit eval -k runs/demo --data data/val.bin --max-tokens 100000\n"
        "  lmkit eval -k ckpt.pt --data val.bin --json | jq .bits_per_byte"
    ),
)
def eval_cmd(
    checkpoint: CheckpointOpt,
    data: Annotated[Path, typer.Option("--data", "-d", help="One dataset as `train` accepts it: a manifest or token .json/.bin from `lmkit tokenize encode`, a directory or quoted glob of .bin files, or a text file of token ids (not a mixture: evaluate each source on its own). Example: --data data/web-val.json")],
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, max=2**20, help="Windows per forward pass (memory vs speed; results do not change). Example: --batch-size 16")] = 8,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", min=1, max=10**15, help="Evaluate at most this many tokens from the start of the file (whole windows). Example: --max-tokens 1000000")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as one JSON object on stdout (for scripts). Example: --json")] = False,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
) -> None:
    """Resolve the runtime settings, run ``api.evaluate``, print the numbers (help: see above)."""
    from lmkit import api
    from lmkit.settings import resolve_settings

    rt = resolve_settings(overrides={"device": device, "dtype": dtype}).runtime
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
