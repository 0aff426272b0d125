"""``lmkit ckpt``: inspect, export and validate checkpoints (also ``lmkit inspect-checkpoint``)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from lmkit.cli.app import LmkitCommand, app
from lmkit.cli.generate import TokenizerDirOpt

ckpt_app = typer.Typer(
    name="ckpt",
    help="Look inside, export and validate checkpoints.\n\nExample: lmkit ckpt inspect runs/demo/latest.pt",
    no_args_is_help=True,
)
app.add_typer(ckpt_app, name="ckpt")

PathArg = Annotated[Path, typer.Argument(metavar="PATH", help="Checkpoint file, or a run directory (uses its latest.pt). Example: runs/demo/latest.pt", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of a table (for scripts). Example: --json")]


class ExportFormat(str, Enum):
    """What ``ckpt export`` writes."""

    safetensors = "safetensors"
    hf = "hf"


def _console():
    from rich.console import Console

    return Console(highlight=False)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover - loop always returns


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def _loss(x: Any) -> str:
    return "none" if x is None else f"{x:.4f}"


def _setting(v: Any) -> str:
    # A value as a user would type it: data sources and paths as text, unset as "none".
    if v is None:
        return "none"
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def _kernels(recorded: dict[str, Any] | None) -> str:
    """The recorded fast-path settings: those off, or that all are at their defaults."""
    if recorded is None:
        return "defaults (not recorded: written before the kernels settings)"
    off = [k for k, v in recorded.items() if v is False]
    rest = [f"{k} {v}" for k, v in recorded.items() if not isinstance(v, bool)]
    return ", ".join(([f"off: {', '.join(off)}"] if off else ["all on"]) + rest)


def _render_summary(s: Any) -> None:
    from rich.table import Table

    cfg = s.model_config
    tok = s.tokenizer or {}
    init = s.init_from
    rows = [
        ("checkpoint", f"{s.path} ({_size(s.size_bytes)} on disk)"),
        ("written by", f"lmkit {s.lmkit_version}, checkpoint format {s.format_version}"),
        ("step", f"{s.iter:,}" if s.iter is not None else "unknown"),
        ("tokens seen", f"{s.tokens_seen:,}" if s.tokens_seen is not None else "unknown"),
        ("wall time", _duration(s.elapsed_s)),
        ("best val loss", f"{_loss(s.best_val_loss)} (last val {_loss(s.val_loss)}, train {_loss(s.train_loss)})"),
        ("model", f"d_model {cfg['d_model']}, {cfg['num_layers']} layers, {cfg['num_heads']} heads, d_ff {cfg['d_ff']}, "
                  f"context {cfg['context_length']}, vocab {cfg['vocab_size']}, rope_theta {cfg['rope_theta']:g}"),
        ("parameters", f"{s.params_total:,} total, {s.params_non_embedding:,} non-embedding"),
        ("dtype", ", ".join(s.dtypes)),
        ("optimizer", "present (training can resume)" if s.has_optimizer else "absent (weights only)"),
        *([("recipe", s.optimizer)] if s.optimizer else []),
        ("W&B run", s.wandb_run_id or "none"),
        ("started from", f"{init.get('path')} (step {init.get('iter')}, sha256 {str(init.get('sha256'))[:12]})" if init else "scratch"),
        *([("cooldown of", f"{s.cooldown.get('path')} (step {s.cooldown.get('iter')}, decayed over {s.cooldown.get('cooldown_iters')} steps)")] if s.cooldown else []),
        ("tokenizer", f"{tok.get('hash')} ({tok.get('vocab_size')} ids) at {tok.get('dir')}" if tok.get("hash") or tok.get("dir") else "none recorded"),
        ("kernels", _kernels(s.kernels)),
    ]
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for section, values in (s.settings or {}).items():
        rows.append((f"settings.{section}", ", ".join(f"{k} {_setting(v)}" for k, v in values.items()) or "(empty)"))
    for k, v in rows:
        table.add_row(k, v)
    console = _console()
    console.print(table)
    if s.tensors is not None:
        t = Table("tensor", "shape", "dtype", "norm", box=None, pad_edge=False)
        for info in s.tensors:
            t.add_row(info.name, "x".join(map(str, info.shape)), info.dtype, f"{info.norm:.4g}")
        console.print()
        console.print(t)


def inspect_cmd(
    path: PathArg,
    tensors: Annotated[bool, typer.Option("--tensors", help="Also list every tensor's name, shape, dtype and norm. Example: --tensors")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Summarise a checkpoint: progress, model shape, parameter counts, optimizer, W&B run, tokenizer.

    Loads the file safely (weights only): pickled code is refused, never run.

    Example: lmkit ckpt inspect runs/demo/latest.pt --tensors
    """
    from lmkit import api

    summary = api.inspect(path, tensors=tensors)
    if as_json:
        typer.echo(json.dumps(summary.to_dict()))
    else:
        _render_summary(summary)


ckpt_app.command("inspect", cls=LmkitCommand)(inspect_cmd)
# The spelling of the older tool; hidden so `lmkit --help` lists one way to do it.
app.command("inspect-checkpoint", hidden=True, cls=LmkitCommand)(inspect_cmd)


@ckpt_app.command("export", cls=LmkitCommand)
def export_cmd(
    path: PathArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory to write (created; must be empty unless --force). Example: --output exported/")],
    format: Annotated[ExportFormat, typer.Option("--format", "-f", help="safetensors: weights with lmkit names; hf: a HuggingFace LlamaForCausalLM folder with tokenizer. Example: --format hf")] = ExportFormat.safetensors,
    force: Annotated[bool, typer.Option("--force", help="Write into a non-empty directory, overwriting files of the same names. Example: --force")] = False,
    tokenizer: TokenizerDirOpt = None,
) -> None:
    """Export a checkpoint's weights (no optimizer state) as safetensors or a HuggingFace Llama folder.

    The hf folder loads with transformers.LlamaForCausalLM.from_pretrained(DIR) and gives lmkit's logits;
    its tokenizer loads with AutoTokenizer.from_pretrained(DIR).

    Example: lmkit ckpt export runs/demo/latest.pt --format hf --output demo-hf/
    """
    from lmkit import api

    written = api.export(path, output, format.value, force=force, tokenizer_dir=tokenizer)
    for p in written:
        typer.echo(f"wrote {p} ({_size(p.stat().st_size)})")
    if format is ExportFormat.hf:
        if not any(p.name == "tokenizer.json" for p in written):
            typer.echo("lmkit: note: the checkpoint's tokenizer was not found, so no tokenizer files were written (pass --tokenizer DIR)", err=True)
        typer.echo(f"load it with:  transformers.LlamaForCausalLM.from_pretrained({str(output)!r})")


@ckpt_app.command("validate", cls=LmkitCommand)
def validate_cmd(
    path: PathArg,
    tokenizer: TokenizerDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a checkpoint: loads, shapes fit its config, finite weights, forward pass, tokenizer round-trip.

    The tokenizer check runs when the checkpoint's tokenizer is found (or given with --tokenizer):
    its hash must match and text must survive encode/decode. Exit code 0 if OK, 1 if not.

    Example: lmkit ckpt validate runs/demo/latest.pt
    """
    from lmkit import api

    report = api.validate(path, tokenizer)
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
    else:
        for c in report.checks:
            typer.echo(f"{c.status:<5} {c.name:<10} {c.detail}")
        typer.echo("OK" if report.ok else f"{len(report.problems)} problem(s) found")
    if not report.ok:
        raise typer.Exit(1)
