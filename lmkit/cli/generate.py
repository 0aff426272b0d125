"""``lmkit generate``: stream text from a checkpoint (generated text to stdout, notes to stderr)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from lmkit.cli.app import LmkitCommand, app
from lmkit.cli.options import ConfigOpt, settings_flags
from lmkit.errors import ConfigError

CheckpointOpt = Annotated[
    Path,
    typer.Option("--checkpoint", "-k", help="Checkpoint file, or a run directory (uses its latest.pt). Example: --checkpoint runs/demo/latest.pt"),
]
TokenizerDirOpt = Annotated[
    Optional[Path],
    typer.Option("--tokenizer", "-t", help="Tokenizer directory to use instead of the one the checkpoint records (its hash must match). Example: --tokenizer tok/"),
]


def _note(message: str) -> None:
    typer.echo(f"lmkit: {message}", err=True)


@app.command(
    "generate",
    cls=LmkitCommand,
    help=(
        "Generate text from a trained checkpoint, streaming it to stdout as it is sampled.\n\n"
        "The prompt is prefilled once, then tokens are decoded one at a time with a preallocated KV cache "
        "(on GPU the decode step is compiled and replayed from CUDA graphs, four steps per replay). Sampling is seeded (--seed), so a run is reproducible; sample i of "
        "--num-samples uses seed + i. The tokenizer is the one the checkpoint was trained with (found from its "
        "records; one with another hash is refused).\n\n"
        "Example: lmkit generate --checkpoint runs/demo/latest.pt --prompt 'The list type' --max-new-tokens 100"
    ),
    epilog=(
        "\b\nExamples:\n"
        "  lmkit generate --checkpoint runs/demo/latest.pt -p 'The list type'\n"
        "  lmkit generate -k runs/demo -p 'def f(' --temperature 0 --max-new-tokens 50\n"
        "  lmkit generate -k runs/demo -p 'Once' --top-p 0.9 --num-samples 3 --seed 7\n"
        "  lmkit generate -k runs/demo --interactive\n\n"
        "Generation ends at <|endoftext|>, at a --stop "
        "string, after --max-new-tokens or at the model's context length (the window does not slide)."
    ),
)
# Generation compiles and graphs its own decode step; the training step's graphs and residual
# dtype do not apply (the checkpoint records the latter).
@settings_flags("generate", "runtime", exclude=("cuda_graphs", "fp32_residual"))
def generate_cmd(
    checkpoint: CheckpointOpt,
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="Text to continue. Example: --prompt 'Once upon a time'")] = None,
    stop: Annotated[Optional[list[str]], typer.Option("--stop", metavar="<text>", help="End generation where this text appears (not printed); repeat for several. Example: --stop $'\\n\\n'")] = None,
    tokenizer: TokenizerDirOpt = None,
    interactive: Annotated[bool, typer.Option("--interactive", "-i", help="Read prompts from stdin in a loop (Ctrl-D to quit). Example: --interactive")] = False,
    echo: Annotated[bool, typer.Option("--echo/--no-echo", help="Print the prompt before its continuation. Example: --no-echo")] = True,
    config: ConfigOpt = None,
    *,
    overrides: dict[str, Any],
) -> None:
    """Build settings, load the checkpoint, stream a completion per prompt (help: see above)."""
    from lmkit.settings import resolve_settings

    settings = resolve_settings(config, overrides)
    if prompt is None and not interactive:
        raise ConfigError("no prompt: pass --prompt TEXT (or --interactive to type prompts)")
    if prompt is not None and not prompt:
        raise ConfigError("the prompt is empty; give some text for the model to continue, e.g. --prompt 'Once upon a time'")

    from lmkit.inference import encode_prompt, load_trained

    rt = settings.runtime
    trained = load_trained(checkpoint, rt.device, rt.dtype, tokenizer_dir=tokenizer, compile=rt.compile)
    if prompt is not None:
        encode_prompt(trained, prompt)  # a prompt that cannot work fails before anything is printed
    _note(f"loaded {trained.path} (step {trained.state.get('iter')}, {trained.model.num_params():,} parameters) on {trained.runtime.device}")
    prompts = [prompt] if prompt is not None else []
    for text in _prompts(prompts, interactive):
        try:
            _complete(trained, text, settings, stop or [], echo)
        except ConfigError as e:
            if not interactive:
                raise
            _note(f"error: {e}")  # a bad prompt ends only itself, not the session


def _prompts(first: list[str], interactive: bool):
    """The given prompt, then (interactive) one per line from stdin until EOF."""
    yield from first
    if not interactive:
        return
    while True:
        sys.stderr.write("> ")
        sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:  # EOF (Ctrl-D)
            sys.stderr.write("\n")
            return
        line = line.rstrip("\n")
        if line.strip():
            yield line


def _complete(trained: Any, prompt: str, settings: Any, stop: list[str], echo: bool) -> None:
    """Generate ``num_samples`` continuations of one prompt and stream them to stdout."""
    from lmkit.inference import encode_prompt, stream

    g = settings.generate
    n_prompt = len(encode_prompt(trained, prompt))
    room = trained.config.context_length - n_prompt + 1
    if g.max_new_tokens > room:
        _note(f"the prompt is {n_prompt} tokens, so the context ({trained.config.context_length}) leaves room for at most {room} new tokens; generation stops there")
    out = sys.stdout
    for i in range(g.num_samples):
        seed = settings.runtime.seed + i
        if g.num_samples > 1:
            out.write(f"--- sample {i + 1}/{g.num_samples} (seed {seed}) ---\n")
        pieces = stream(trained, prompt, g.max_new_tokens, g.temperature, g.top_k, g.top_p, seed=seed, stop=stop)
        if echo:
            out.write(prompt)
        out.flush()
        start, count = time.perf_counter(), 0
        for piece in pieces:
            count += piece.id >= 0
            if piece.text:
                out.write(piece.text)
                out.flush()
        out.write("\n")
        out.flush()
        elapsed = time.perf_counter() - start
        _note(f"{count} tokens in {elapsed:.2f}s ({count / max(elapsed, 1e-9):.1f} tokens/s)")
