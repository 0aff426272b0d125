"""Using a trained model: load a checkpoint with its tokenizer, and stream text from it.

Example (a notebook)::

    >>> from lmkit.app.inference import load_trained, stream
    >>> trained = load_trained("runs/demo/latest.pt")           # doctest: +SKIP
    >>> for piece in stream(trained, "The list type", max_new_tokens=50):  # doctest: +SKIP
    ...     print(piece.text, end="", flush=True)

The tokenizer is the one the checkpoint was trained with: its directory and content hash are
recorded in the checkpoint, so a tokenizer whose hash differs is refused instead of producing
garbage. Generation stops at ``<|endoftext|>`` (when the tokenizer has it), at a stop string
or after ``max_new_tokens``. Past the context length the window slides (``window="slide"``, the
default: see ``lmkit.generation.generate``), and a prompt longer than the context keeps its last
``context_length`` tokens; ``window="stop"`` ends at the context instead, so at most
``context_length - prompt_tokens + 1`` tokens follow a prompt, and refuses a longer prompt.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from lmkit.errors import ConfigError, TokenizerError
from lmkit.generation import INVALID_TOKEN, NonFiniteLogitsError, Utf8StreamDecoder, check_sampling_args
from lmkit.generation import generate as generate_ids
from lmkit.kernels import KernelPlan
from lmkit.model import ModelConfig, TransformerLM
from lmkit.settings import Settings, validate_tree
from lmkit.tokenizer import Tokenizer
from lmkit.training.checkpoint import open_checkpoint
from lmkit.training.runtime import Runtime, resolve_runtime

EOT = "<|endoftext|>"
# Checkpoint entries too large to keep around once the model is built.
_HEAVY_KEYS = ("model", "optimizer", "rng")


@dataclass
class Trained:
    """A model ready to use, with everything its checkpoint says about it."""

    model: TransformerLM  # in eval mode, on ``runtime.device``, weights in ``runtime.weight_dtype``
    config: ModelConfig
    settings: Settings | None  # the run's settings (None if they no longer validate)
    tokenizer: Tokenizer | None  # None when none was found and none was required
    state: dict[str, Any]  # the checkpoint dict without weights, optimizer and RNG states
    path: Path
    runtime: Runtime

    @property
    def eot_id(self) -> int | None:
        """Id of ``<|endoftext|>`` if the tokenizer registers it."""
        if self.tokenizer is None or EOT not in self.tokenizer.special_tokens:
            return None
        return self.tokenizer.token_id(EOT)


@dataclass(frozen=True)
class Piece:
    """One generated token and the text it completes.

    ``text`` is ``""`` while a character is unfinished or while text that may begin a stop
    string is held back. A last piece with ``id == -1`` releases what was still held back when
    generation ended.
    """

    id: int
    text: str


def settings_of(state: dict[str, Any]) -> Settings | None:
    """The run's settings from a checkpoint, or None if absent or no longer valid."""
    try:
        return validate_tree(state["settings"], "checkpoint settings")
    except (KeyError, TypeError, ConfigError):
        return None


def _candidate_dirs(state: dict[str, Any], path: Path) -> list[Path]:
    # Where a checkpoint's tokenizer may be: the directory recorded from the data's metadata,
    # the run's tokenizer_dir setting, each also relative to the checkpoint (a copied run
    # directory), and a tokenizer/ folder beside the checkpoint.
    recorded = [(state.get("tokenizer") or {}).get("dir"), ((state.get("settings") or {}).get("data") or {}).get("tokenizer_dir")]
    out: list[Path] = []
    for d in recorded:
        if d:
            out += [Path(d)] if Path(d).is_absolute() else [Path(d), path.parent / d]
    out.append(path.parent / "tokenizer")
    return list(dict.fromkeys(out))


def find_tokenizer(state: dict[str, Any], path: Path, override: Path | None = None) -> Tokenizer | None:
    """The tokenizer a checkpoint was trained with, checked against its recorded hash.

    Args:
        state: the checkpoint dict.
        path: the checkpoint file (relative tokenizer paths are also tried beside it).
        override: a tokenizer directory to use instead of the recorded one (``--tokenizer``).

    Returns:
        The tokenizer, or None when none is recorded or found (and no override was given).

    Raises:
        TokenizerError: the tokenizer's hash differs from the recorded one, its vocabulary is
            larger than the model's, or the override cannot be read.
    """
    record = state.get("tokenizer") or {}
    want_hash = record.get("hash")
    if override is not None:
        tok, where = Tokenizer.from_dir(override), Path(override)
    else:
        where = next((d for d in _candidate_dirs(state, path) if (d / "vocab.json").is_file()), None)
        if where is None:
            return None
        tok = Tokenizer.from_dir(where)
    if want_hash and tok.hash != want_hash:
        raise TokenizerError(
            f"{where}: tokenizer hash {tok.hash} does not match the {want_hash} that {path.name} was trained with; "
            "its ids would decode to garbage. Pass the training tokenizer with --tokenizer DIR"
        )
    vocab = (state.get("model_config") or {}).get("vocab_size", tok.vocab_size)
    if tok.vocab_size > vocab:
        raise TokenizerError(f"{where}: tokenizer has {tok.vocab_size} ids but the model only {vocab}; it is not this model's tokenizer")
    return tok


def load_trained(
    path: Path | str,
    device: str = "auto",
    dtype: str = "auto",
    *,
    tokenizer_dir: Path | str | None = None,
    tokenizer: Literal["required", "optional", "none"] = "required",
    compile: bool | None = None,
    weights: Literal["compute", "float32"] = "compute",
) -> Trained:
    """Load a checkpoint into an eval-mode model (never unpickling code), with its tokenizer.

    Args:
        path: a checkpoint file, e.g. ``runs/demo/latest.pt``, or a run directory (its
            ``latest.pt`` is used).
        device: ``auto`` (CUDA when available), ``cuda`` or ``cpu``.
        dtype: compute precision (``runtime.dtype``): ``auto`` (bfloat16 on CUDA, float32 on
            CPU), ``bfloat16`` or ``float32``.
        tokenizer_dir: use this tokenizer directory instead of the recorded one.
        tokenizer: ``required`` (generation): raise if none is found; ``optional``: None if
            none is found; ``none``: do not look (eval needs none).
        compile: compile the decode step (default: on for CUDA); stored in ``runtime.compile``.
        weights: ``compute``: cast the weights to ``dtype`` (generation: decoding reads every
            weight per token); ``float32``: keep them in float32 and compute under
            ``trained.runtime.autocast()`` (evaluation, matching training's numbers).

    Returns:
        ``Trained``.

    Raises:
        CheckpointError: missing, damaged, foreign or newer-format file; weights that do not
            fit the recorded model_config.
        TokenizerError: tokenizer missing (when required) or not the one trained with.
        ConfigError: ``device="cuda"`` without a CUDA device.
    """
    runtime = resolve_runtime(device, dtype, compile, weights=weights)
    opened = open_checkpoint(path)  # checked before any tensor is sized by the file's fields
    path, state, config = opened.path, opened.state, opened.check()
    tok = None
    if tokenizer != "none" or tokenizer_dir:
        tok = find_tokenizer(state, path, Path(tokenizer_dir) if tokenizer_dir else None)
    if tok is None and tokenizer == "required":
        recorded = (state.get("tokenizer") or {}).get("dir")
        why = f"its recorded tokenizer {recorded} was not found" if recorded else "it records no tokenizer"
        raise TokenizerError(f"{path}: {why}; pass the tokenizer it was trained with: --tokenizer DIR")
    model = TransformerLM(config)
    model.load_state_dict(state["model"])
    model = model.to(device=runtime.device, dtype=runtime.weight_dtype).eval().requires_grad_(False)
    light = {k: v for k, v in state.items() if k not in _HEAVY_KEYS}
    light["has_optimizer"] = state.get("optimizer") is not None
    return Trained(model, config, settings_of(state), tok, light, path, runtime)


def encode_prompt(trained: Trained, prompt: str, window: Literal["slide", "stop"] = "slide") -> list[int]:
    """Token ids of ``prompt``, checked to be non-empty (and, with ``window="stop"``, to fit the context).

    With ``window="slide"`` all the ids are returned; generation reads the last
    ``context_length`` of them.

    Raises:
        ConfigError: an empty prompt, or one longer than the model's context length with
            ``window="stop"``.
    """
    if trained.tokenizer is None:
        raise TokenizerError(f"{trained.path}: no tokenizer loaded; pass --tokenizer DIR")
    if not prompt:
        raise ConfigError("the prompt is empty; give some text for the model to continue, e.g. --prompt 'Once upon a time'")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:  # undecodable bytes from the command line arrive as surrogates
        raise ConfigError(f"the prompt is not valid UTF-8 (bad byte at character {e.start}); check the text's encoding") from None
    ids = trained.tokenizer.encode(prompt)
    ctx = trained.config.context_length
    if len(ids) > ctx and window == "stop":
        raise ConfigError(
            f"the prompt is {len(ids)} tokens, longer than the model's context_length {ctx}; "
            "shorten it, or pass --window slide to keep its last part"
        )
    return ids


def stream(
    trained: Trained,
    prompt: str,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    *,
    seed: int | None = None,
    stop: Sequence[str] = (),
    stop_at_eot: bool = True,
    window: Literal["slide", "stop"] = "slide",
) -> Iterator[Piece]:
    """Generate a continuation of ``prompt``, yielding each token as soon as it is sampled.

    The prompt is prefilled once; then each token is one cached decode step (compiled with CUDA
    graphs when ``trained.runtime.compile`` is on and the model is on CUDA). Text is decoded
    incrementally, so a UTF-8 character split over several tokens comes out whole.

    Args:
        trained: from ``load_trained``.
        prompt: text to continue (non-empty; with ``window="slide"`` only its last
            ``context_length`` tokens are read, with ``"stop"`` a longer one is refused).
        max_new_tokens: upper bound on generated tokens.
        temperature: 0 is greedy (and so is anything below ``generation.MIN_TEMPERATURE``);
            otherwise the softmax temperature.
        top_k: sample among the k most likely tokens only.
        top_p: nucleus sampling mass, in (0, 1].
        seed: makes sampling reproducible (None: a fresh random seed).
        stop: strings that end generation; neither they nor anything after is yielded.
        stop_at_eot: end at ``<|endoftext|>`` (which is not yielded).
        window: ``"slide"`` past the context length, or ``"stop"`` there.

    Yields:
        ``Piece(id, text)`` per token; ``"".join(p.text for p in ...)`` is the continuation.

    Raises:
        ConfigError: bad sampling parameters, an empty or (``window="stop"``) too long prompt.
            Raised at the call, before any work.
        NonFiniteLogitsError: (while iterating) the model's scores are NaN or infinite, e.g.
            from damaged weights; raised before the token they would have produced.
    """
    try:
        check_sampling_args(temperature, top_k, top_p)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if any(not s for s in stop):
        raise ConfigError("a stop string must not be empty")
    if window not in ("slide", "stop"):
        raise ConfigError(f"window must be 'slide' or 'stop', got {window!r}")
    ids = encode_prompt(trained, prompt, window)
    stop_ids = [trained.eot_id] if stop_at_eot and trained.eot_id is not None else []
    tokens = generate_ids(
        trained.model, ids, max_new_tokens, temperature, top_k, top_p, stop_ids=stop_ids, seed=seed,
        compile_decode=trained.runtime.compile, window=window,
        kernels=KernelPlan.from_settings(trained.settings.kernels if trained.settings is not None else None),
    )
    return _pieces(trained.tokenizer, tokens, set(stop_ids), tuple(stop))


def _pieces(tokenizer: Tokenizer, tokens: Iterator[torch.Tensor], stop_ids: set[int], stop: tuple[str, ...]) -> Iterator[Piece]:
    # stream()'s body once its arguments are checked.
    decoder = Utf8StreamDecoder()
    pending = ""  # decoded text not yet released because it may be the start of a stop string
    try:
        for i, t in enumerate(tokens):
            token = int(t[0])  # one sequence; streaming needs the id on the host anyway
            if token == INVALID_TOKEN:  # checked here, in the read-back, not by a sync of its own
                raise NonFiniteLogitsError(i)
            if token in stop_ids:
                break
            pending += decoder.decode(tokenizer.vocab.get(token, b""))
            cut = _first_stop(pending, stop)
            if cut is not None:
                yield Piece(token, pending[:cut])
                return
            keep = _held_back(pending, stop)
            yield Piece(token, pending[: len(pending) - keep])
            pending = pending[len(pending) - keep :]
        tail = pending + decoder.flush()
        cut = _first_stop(tail, stop)
        if tail and cut != 0:
            yield Piece(-1, tail if cut is None else tail[:cut])
    finally:
        close = getattr(tokens, "close", None)
        if close is not None:
            close()  # free the KV cache at once when the caller stops early


def _first_stop(text: str, stop: tuple[str, ...]) -> int | None:
    """Index of the earliest stop string in ``text``, or None."""
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(hits) if hits else None


def _held_back(text: str, stop: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that could begin a stop string.

    Example: with stop ``("\\n\\n",)`` the text ``"end.\\n"`` holds back 1 character.
    """
    best = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if s.startswith(text[-n:]):
                best = n
                break
    return best


def generate_text(trained: Trained, prompt: str, **kwargs: Any) -> str:
    """The whole continuation as one string; ``kwargs`` as for ``stream``."""
    return "".join(p.text for p in stream(trained, prompt, **kwargs))
