"""``lmkit generate``: stream text from a checkpoint (generated text to stdout, notes to stderr)."""

from __future__ import annotations

import itertools
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
        "(on GPU the decode step is compiled and replayed from CUDA graphs, four steps per replay). Past the model's "
        "context length the window slides: the oldest quarter is dropped and the rest prefilled again, so every token "
        "is predicted from a full forward pass over the window (--window stop ends there instead). Sampling is seeded "
        "(--seed), so a run is reproducible; sample i of --num-samples uses seed + i. The tokenizer is the one the checkpoint was trained with (found from its "
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
        "string or after --max-new-tokens (with --window stop also at the model's context length)."
    ),
)
# Generation compiles and graphs its own decode step; the training step's graphs and residual
# dtype do not apply (the checkpoint records the latter).
@settings_flags("generate", "runtime", exclude=("compile_scope", "cuda_graphs", "fp32_residual"))
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
    if sys.stdout is None:  # started with stdout closed (`>&-`)
        raise ConfigError("stdout is closed, so the generated text has nowhere to go; redirect it instead, e.g. > samples.txt")
    if prompt is None and not interactive:
        raise ConfigError("no prompt: pass --prompt TEXT (or --interactive to type prompts)")
    if prompt is not None and not prompt:
        raise ConfigError("the prompt is empty; give some text for the model to continue, e.g. --prompt 'Once upon a time'")

    from lmkit import api

    rt = settings.runtime
    trained = api.load(checkpoint, rt.device, rt.dtype, tokenizer_dir=tokenizer, compile=rt.compile)
    if prompt is not None:
        api.encode_prompt(trained, prompt, settings.generate.window)  # a prompt that cannot work fails before anything is printed
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
    """The given prompt, then (interactive) one per line from stdin until EOF or a closed stdin."""
    yield from first
    if not interactive:
        return
    stdin = sys.stdin
    if stdin is None or stdin.closed:  # started with stdin closed (`<&-`): nothing to read
        _note("stdin is closed; no prompts to read")
        return
    # Bytes, decoded here: a line that is not UTF-8 is then reported and skipped, where the text
    # layer would raise mid-read. (A stdin without a byte layer, e.g. StringIO, is read as text.)
    source = getattr(stdin, "buffer", stdin)
    for number in itertools.count(1):
        sys.stderr.write("> ")
        sys.stderr.flush()
        try:
            raw = source.readline()
        except (OSError, ValueError):  # closed or unreadable underneath us: the end, as at EOF
            raw = ""
        if not raw:  # EOF (Ctrl-D)
            sys.stderr.write("\n")
            return
        try:
            line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError as e:
            _note(f"error: input line {number} is not valid UTF-8 (bad byte at offset {e.start}); skipped")
            continue
        line = line.rstrip("\r\n")
        if line.strip():
            yield line


def _complete(trained: Any, prompt: str, settings: Any, stop: list[str], echo: bool) -> None:
    """Generate ``num_samples`` continuations of one prompt and stream them to stdout."""
    from lmkit import api

    g = settings.generate
    ctx = trained.config.context_length
    n_prompt = len(api.encode_prompt(trained, prompt, g.window))
    room = ctx - n_prompt + 1
    if g.window == "stop" and g.max_new_tokens > room:
        _note(f"the prompt is {n_prompt} tokens, so the context ({ctx}) leaves room for at most {room} new tokens; generation stops there (--window slide goes on)")
    elif n_prompt > ctx:
        _note(f"the prompt is {n_prompt} tokens, longer than the context ({ctx}): the model reads only its last {ctx}")
    out = sys.stdout
    for i in range(g.num_samples):
        # Wrapped into the range --seed accepts, so the printed seed reproduces the sample.
        seed = (settings.runtime.seed + i) % 2**63
        start, count = time.perf_counter(), 0
        pieces = api.stream(trained, prompt, g.max_new_tokens, g.temperature, g.top_k, g.top_p, seed=seed, stop=stop, window=g.window)
        # The first piece comes from the prefill: a model that cannot generate (NaN weights)
        # fails there, before anything of this sample is printed.
        first = next(pieces, None)
        if g.num_samples > 1:
            out.write(f"--- sample {i + 1}/{g.num_samples} (seed {seed}) ---\n")
        if echo:
            out.write(prompt)
        out.flush()
        for piece in itertools.chain([first] if first is not None else [], pieces):
            count += piece.id >= 0
            if piece.text:
                out.write(piece.text)
                out.flush()
        out.write("\n")
        out.flush()
        elapsed = time.perf_counter() - start
        _note(f"{count} tokens in {elapsed:.2f}s ({count / max(elapsed, 1e-9):.1f} tokens/s)")
