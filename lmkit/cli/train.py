"""``lmkit train``: build settings, call ``api.train``, say where the result is."""

from __future__ import annotations

import subprocess
import sys
from typing import Annotated, Any, Optional

import typer

from lmkit.cli.app import LmkitCommand, app
from lmkit.cli.options import ConfigOpt, settings_flags
from lmkit.errors import ConfigError

TRAIN_SECTIONS = ("model", "data", "optim", "train", "checkpoint", "logging", "runtime", "kernels")
# The kernels section's generation fields: recorded with the run, set when generating.
DECODE_KERNELS = ("decode_attention_kernel", "stacked_decode_weights", "decode_tuning", "decode_steps_per_replay")


@app.command(
    "train",
    cls=LmkitCommand,
    # "\b" keeps click from re-flowing the example lines (one command per line at 80 columns).
    epilog=(
        "\b\nExamples:\n"
        "  lmkit train --demo\n"
        "  lmkit train --config examples/configs/small_model.yaml --max-iters 5000\n"
        "  lmkit train --d_model 512 --num_layers 6 --no-wandb \\\n"
        "      --train-data-path data/train.bin\n"
        "  lmkit train --train-data-path data/web-train.json \\\n"
        "      --val-data-path data/web-val.json\n"
        "  lmkit train --train-data-path 'web=web.json:0.7,code=code.json:0.3'\n"
        "  lmkit train --nproc-per-node 8 --config cfg.yaml\n"
        "  lmkit train --config cfg.yaml --optimizer muon --schedule wsd\n"
        "  lmkit train --cooldown-from runs/wsd/ckpt_0003000.pt --cooldown-iters 400 \\\n"
        "      --checkpoint-dir runs/wsd-cool3000\n"
        "  lmkit train --config cfg.yaml --no-ce-kernel --no-stacked-qkv\n\n"
        "Flags accept --d-model and --d_model spellings; precedence: defaults < --config YAML < "
        "LMKIT_* environment < flags."
    ),
)
@settings_flags(*TRAIN_SECTIONS, exclude=DECODE_KERNELS)
def train_cmd(
    config: ConfigOpt = None,
    demo: Annotated[bool, typer.Option("--demo", help="Train a tiny model on built-in English text (no download); ~2 min on 2 CPU cores.")] = False,
    print_config: Annotated[bool, typer.Option("--print-config", help="Print the fully resolved settings as YAML and exit.")] = False,
    nproc_per_node: Annotated[Optional[int], typer.Option("--nproc-per-node", min=1, max=1024, help="Launch this many processes (GPUs) through torchrun, e.g. 8.")] = None,
    *,
    overrides: dict[str, Any],
) -> None:
    """Train a decoder-only transformer on token files (.bin from `lmkit tokenize encode`).

    Resumes automatically from CHECKPOINT_DIR/latest.pt. Shows a live dashboard on a terminal, plain log lines otherwise. Writes checkpoints, metrics.jsonl and settings.yaml to CHECKPOINT_DIR.
    """
    from lmkit.settings import resolve_settings, settings_to_yaml

    from lmkit.api import launch

    if nproc_per_node and nproc_per_node > 1 and not launch().under_torchrun:
        raise typer.Exit(_launch_torchrun(nproc_per_node))
    base = None
    if demo:
        from lmkit import api

        base = api.demo_preset()
    settings = resolve_settings(config, overrides, base=base)
    if print_config:
        typer.echo(settings_to_yaml(settings), nl=False)
        return
    if demo:
        from lmkit import api

        settings = api.prepare_demo_data(settings, notice=lambda m: typer.echo(f"lmkit: {m}", err=True))

    from lmkit import api

    result = api.train(settings, console_sinks=True)
    if not launch().is_main:
        return
    # The run is over and saved: from here a closed stdout/stderr (`| head -1`) only silences
    # these lines (say() points the descriptor at /dev/null) and never changes the exit code.
    ckpt = result.last_checkpoint or (result.run_dir / "latest.pt")
    val = f", val loss {result.val_loss:.4f}" if result.val_loss is not None else ""
    loss = f"train loss {result.train_loss:.4f}" if result.train_loss is not None else "no new steps (already at max_iters; raise --max-iters to continue)"
    api.say(f"done: step {result.step}, {loss}{val}", sys.stdout)
    _show_curves(result.run_dir)
    api.say(f"checkpoint: {ckpt}", sys.stdout)
    api.say(f"sample from it:  {_generate_hint(settings, ckpt)}", sys.stdout)


def _generate_hint(settings, ckpt) -> str:
    """The `lmkit generate` command that samples from ``ckpt``, with ``--tokenizer`` when needed.

    generate finds the tokenizer the way ``find_tokenizer`` does, from the data's metadata and
    the settings; a run on token-id files that record no tokenizer (or one since moved) would
    fail there with "records no tokenizer", so the hint asks for the directory instead.
    """
    from lmkit import api
    from lmkit.errors import LmkitError

    base = f"lmkit generate --checkpoint {ckpt}"
    try:
        meta = api.open_data(settings.data.train_data_path).sources[0].meta()  # one tokenizer for all sources
        record = {"dir": meta.tokenizer_dir, "hash": meta.tokenizer_hash}
        state = {"tokenizer": record, "settings": settings.model_dump(mode="json"), "model_config": {"vocab_size": settings.model.vocab_size}}
        found = api.find_tokenizer(state, ckpt) is not None
    except (LmkitError, OSError, ValueError):
        found, meta = False, None
    if found:
        return f'{base} --prompt "The"'
    recorded = getattr(meta, "tokenizer_dir", None)
    why = f"{recorded} was not found" if recorded else "the training data records no tokenizer"
    return f'{base} --tokenizer DIR --prompt "The"  (DIR: the tokenizer that encoded the training data; {why})'


def _show_curves(run_dir) -> None:
    """End of training: the loss/LR curves as a PNG (with matplotlib) or a terminal chart."""
    from lmkit import api
    from lmkit.errors import LmkitError

    try:
        chart = api.plot_metrics(run_dir / "metrics.jsonl")
    except LmkitError:
        return  # nothing logged (e.g. a resumed run that was already complete)
    api.say(f"curves: {chart}" if not isinstance(chart, str) else chart)


def _launch_torchrun(nproc: int) -> int:
    """Re-run this very command under torchrun (the way `tune run` wraps it)."""
    args = [a for a in sys.argv[1:]]
    try:
        i = args.index("--nproc-per-node")
        del args[i : i + 2]
    except ValueError:
        args = [a for a in args if not a.startswith("--nproc-per-node=")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "lmkit", *args]
    try:
        return subprocess.call(cmd)
    except FileNotFoundError as e:  # pragma: no cover - python itself missing
        raise ConfigError(f"cannot launch torchrun: {e}") from None
