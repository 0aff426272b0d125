"""Autoregressive generation with a KV cache: prefill, decode one token, decode n, generate.

Notation used in shape comments:
    B  batch size (sequences generated together)
    T  prompt length
    V  vocab_size

The prompt is run once through the model (prefill), filling every layer's KV cache; each
further token is then a forward pass over a single position that attends over the cache. The
cache has a fixed size for the whole call, so the decode step has static shapes and can be
compiled with CUDA graphs (``compile_decode=True``).

When prompt plus new tokens outgrow the context (``window="slide"``, the default), the window
slides: once the cache is full, its last ``slide_keep(context_length)`` tokens (all but the
oldest quarter) are prefilled again at positions 0.., and decoding goes on from there. RoPE
encodes absolute positions, so keys cached at their old positions cannot simply be kept; the
re-prefill makes every sampled distribution exactly that of a full forward pass over the
window in use, at the cost of one prefill per ``context_length // 4`` tokens. A prompt longer
than the context keeps its last ``context_length`` tokens. With ``window="stop"`` generation
ends at the context instead: at most ``context_length - T + 1`` tokens follow a prompt of
length T (the last one predicted from a full window), and a longer prompt is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import torch

from lmkit.generation.cuda_graph import GraphedDecoder, decoder_for
from lmkit.generation.sampling import (
    INVALID_TOKEN,
    NonFiniteLogitsError,
    check_sampling_args,
    effective_temperature,
    exponential_noise,
    sample,
)
from lmkit.kernels.decode import apply_decode, remove_decode
from lmkit.kernels.plan import KernelPlan
from lmkit.model import TransformerLM

DecodeFn = Callable[..., torch.Tensor]
Window = Literal["slide", "stop"]


def slide_keep(context_length: int) -> int:
    """Tokens kept when the window slides: all but the oldest quarter (at least one goes, one stays).

    Example: a context of 128 keeps 96 tokens and slides again after 32 more.
    """
    return max(1, context_length - max(1, context_length // 4))


def _last_logits(model: TransformerLM, idx: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    # Only the last position's logits are needed: apply the LM head to it alone instead of
    # building (B, T, V) logits for the whole prompt.
    h = model.hidden(idx, input_pos)  # (B, T, D)
    return model.lm_head(h[:, -1])  # (B, V)


def prefill(
    model: TransformerLM,
    prompt_ids: torch.Tensor,
    input_pos: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the prompt through a cache-enabled model and sample the first new token.

    Args:
        model: a model after ``setup_cache``.
        prompt_ids: (B, T) prompt token ids.
        input_pos: (T,) their positions, normally ``arange(T)``.
        temperature: see ``sampling.logits_to_probs``.
        top_k: see ``sampling.logits_to_probs``.
        top_p: see ``sampling.logits_to_probs``.
        noise: (B, V) ``exponential_noise`` for the draw (unused when temperature is 0).

    Returns:
        (B,) the first generated token of each sequence.
    """
    logits = _last_logits(model, prompt_ids, input_pos)  # (B, V)
    return sample(logits, temperature, top_k, top_p, noise=noise)


def decode_one_token(
    model: TransformerLM,
    token: torch.Tensor,
    input_pos: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Feed one token per sequence at ``input_pos`` and sample the next.

    Pure tensor work with static shapes and the randomness passed in as ``noise``, so it can be
    compiled and captured in a CUDA graph (see ``cuda_graph.GraphedDecoder``).

    Args:
        model: a model after ``setup_cache``, already holding positions < input_pos.
        token: (B,) the latest token of each sequence.
        input_pos: (1,) its position.
        temperature: see ``sampling.logits_to_probs``.
        top_k: see ``sampling.logits_to_probs``.
        top_p: see ``sampling.logits_to_probs``.
        noise: (B, V) ``exponential_noise`` for the draw (unused when temperature is 0).

    Returns:
        (B,) the next token of each sequence (``sampling.INVALID_TOKEN`` for a non-finite row).
    """
    # A row that went non-finite carries INVALID_TOKEN (-1) until the host reads it back and
    # raises; clamping keeps the embedding lookup of the steps before that in range.
    token = token.clamp(min=0)
    logits = _last_logits(model, token[:, None], input_pos)  # token[:, None]: (B, 1)
    return sample(logits, temperature, top_k, top_p, noise=noise)


def decode_n_tokens(
    model: TransformerLM,
    token: torch.Tensor,
    input_pos: torch.Tensor,
    num_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[torch.Tensor], None] | None = None,
    decode_fn: DecodeFn = decode_one_token,
) -> Iterator[torch.Tensor]:
    """Decode up to ``num_new_tokens`` tokens, one forward pass each, lazily.

    Args:
        model: a model after ``setup_cache`` and ``prefill``.
        token: (B,) the last token produced so far (not yet in the cache).
        input_pos: (1,) its position.
        num_new_tokens: tokens to produce after ``token``.
        temperature: see ``sampling.logits_to_probs``.
        top_k: see ``sampling.logits_to_probs``.
        top_p: see ``sampling.logits_to_probs``.
        generator: seeded source of the sampling noise (None: torch's global generator).
        callback: called with each new (B,) token as it is produced, e.g. to stream it.
        decode_fn: ``decode_one_token`` or a compiled version of it.

    Yields:
        (B,) each new token. Stopping early (closing the iterator) skips the remaining work.
    """
    input_pos = input_pos.clone()  # advanced in place below; keep the caller's tensor intact
    B, V = token.shape[0], model.config.vocab_size
    for _ in range(num_new_tokens):
        noise = None
        if temperature > 0:
            noise = exponential_noise((B, V), generator, token.device)
        # clone: under CUDA graphs the output buffer is overwritten by the next replay.
        token = decode_fn(model, token, input_pos, temperature, top_k, top_p, noise).clone()
        input_pos += 1
        if callback is not None:
            callback(token)
        yield token


def _as_batch(prompt_ids: Sequence[int] | torch.Tensor, device: torch.device) -> torch.Tensor:
    ids = torch.as_tensor(prompt_ids, dtype=torch.long)
    if ids.dim() == 1:
        ids = ids[None, :]  # (1, T)
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise ValueError(
            f"prompt_ids must be a non-empty list of ids or a (B, T) tensor, got {tuple(ids.shape)}"
        )
    return ids.to(device)


def generate(
    model: TransformerLM,
    prompt_ids: Sequence[int] | torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_ids: Sequence[int] = (),
    seed: int | None = None,
    device: torch.device | str | None = None,
    compile_decode: bool = False,
    window: Window = "slide",
    kernels: KernelPlan | None = None,
) -> Iterator[torch.Tensor]:
    """Stream new tokens after a prompt.

    Arguments are checked at call time; the work starts when the iterator is first advanced.
    The model gets a fresh KV cache then (at most ``context_length`` positions, however many
    tokens are asked for), dropped again when the iterator finishes or is closed. (With
    ``compile_decode`` on CUDA the cache stays on the model for the next call so the captured
    graph can be replayed; ``model.clear_cache()`` frees it.) Greedy decoding (temperature 0,
    or below ``sampling.MIN_TEMPERATURE``) is deterministic; sampling with a ``seed`` is
    reproducible on the same device and torch version.

    Args:
        model: the language model (its weights and dtype as they should be used).
        prompt_ids: a list of ids (one sequence) or a (B, T) tensor (equal-length prompts).
        max_new_tokens: upper bound on new tokens per sequence.
        temperature: see ``sampling.logits_to_probs``; 0 means greedy.
        top_k: see ``sampling.logits_to_probs``.
        top_p: see ``sampling.logits_to_probs``.
        stop_ids: token ids that end a sequence (e.g. end-of-text). The stop token itself is
            yielded; afterwards that sequence's entries repeat it, and generation ends once
            every sequence has stopped.
        seed: seeds the sampling noise; any int (taken modulo 2**64). None: a fresh random seed.
        device: where to run (default: the model's device; the model is not moved, so a
            different device is an error).
        compile_decode: on CUDA, decode with a CUDA-graph compiled step; ignored
            on other devices.
        window: ``"slide"`` to go on past the context length (see the module docstring) or
            ``"stop"`` to end there.
        kernels: the decode fast paths to use (``KernelPlan.from_settings(settings.kernels)``;
            None: the defaults). They never change the tokens beyond rounding.

    Returns:
        An iterator of (B,) long tensors, the new token of every sequence, each yielded as soon
        as it is produced. It ends at ``max_new_tokens``, when all sequences have hit a stop
        id, or (``window="stop"``) at the context length.

    Raises:
        ValueError: empty or out-of-vocabulary prompt, a prompt longer than the context with
            ``window="stop"``, a negative max_new_tokens, a device other than the model's, or
            bad sampling parameters.
        NonFiniteLogitsError: (while iterating) the model's scores turned NaN or infinite. It
            is raised where tokens are read back anyway, never by a sync of its own: at the next
            slide, once every sequence has stopped or gone bad, or at the end. Until then the
            sequence yields ``sampling.INVALID_TOKEN`` (-1), which a caller reading tokens can
            raise on at once, as ``inference.stream`` does.
    """
    model_device = next(model.parameters()).device
    if device is not None:
        wanted = torch.device(device)
        if wanted.type != model_device.type or wanted.index not in (None, model_device.index):
            raise ValueError(f"the model is on {model_device}, not {wanted}; move it first")
    if window not in ("slide", "stop"):
        raise ValueError(f"window must be 'slide' or 'stop', got {window!r}")
    prompt = _as_batch(prompt_ids, model_device)  # (B, T)
    T = prompt.shape[1]
    context_length, vocab_size = model.config.context_length, model.config.vocab_size
    if T > context_length and window == "stop":
        raise ValueError(f"prompt of {T} tokens exceeds context_length {context_length}")
    # One read-back of the prompt (it came from the host anyway) to fail clearly on bad ids.
    if bool((prompt < 0).any() | (prompt >= vocab_size).any()):
        raise ValueError(f"prompt_ids must be token ids in 0..{vocab_size - 1}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    check_sampling_args(temperature, top_k, top_p)
    temperature = effective_temperature(temperature)  # one value for the noise and the graph key
    prompt = prompt[:, -context_length:]  # (B, min(T, context_length)): the part the model can read
    num_new = max_new_tokens if window == "slide" else min(max_new_tokens, context_length - T + 1)
    generator = torch.Generator(device=model_device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed % 2**64)  # the generator's range; any int maps into it
    return _stream(
        model, prompt, num_new, temperature, top_k, top_p,
        torch.tensor(list(stop_ids), dtype=torch.long, device=model_device), generator,
        compile_decode and model_device.type == "cuda", KernelPlan() if kernels is None else kernels,
    )


@torch.inference_mode()
def _stream(
    model: TransformerLM,
    prompt: torch.Tensor,
    num_new: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    stops: torch.Tensor,
    generator: torch.Generator,
    use_compile: bool,
    kernels: KernelPlan,
) -> Iterator[torch.Tensor]:
    # generate()'s body once the arguments are known to be valid; see its docstring.
    if num_new == 0:
        return
    B, T = prompt.shape
    device, context_length = prompt.device, model.config.context_length
    decoder = None
    if use_compile:
        # The captured step reads one set of cache buffers: size them to the full context and
        # keep them between calls, so every prompt length replays the same graph.
        _reuse_or_setup_cache(model, B, context_length)
    else:
        # min(): never more than the context, however large num_new is (sliding reuses it).
        model.setup_cache(B, max_len=min(context_length, T + num_new - 1))
    # The decode layers, their stacked weights copied from the current ones (in place when kept
    # from an earlier call: the weights may have changed since, e.g. by training).
    apply_decode(model, kernels.stacked_decode_weights, kernels.decode_attention_kernel)
    if use_compile:
        decoder = decoder_for(  # before prefill: see there
            model, B, temperature, top_k, top_p, decode_one_token, kernels.decode_steps_per_replay, kernels.decode_tuning
        )
    try:
        tokens = _windows(model, prompt, num_new, temperature, top_k, top_p, generator, decoder)
        if stops.numel() == 0:
            yield from tokens
            return
        # A row gone non-finite ends like a stopped one (it repeats INVALID_TOKEN); the raise
        # then comes from the read-back that ends the loop, not from a sync of its own.
        stops = torch.cat((stops, stops.new_tensor([INVALID_TOKEN])))
        done = torch.zeros(B, dtype=torch.bool, device=device)
        last = None
        for new in tokens:
            # Finished sequences keep repeating their stop id, so every entry stays a valid id.
            if last is not None:
                new = torch.where(done, last, new)
            yield new
            last = new
            done |= torch.isin(new, stops)
            # The one host sync per token: streaming reads each token back anyway, and this is
            # what lets the loop end early.
            if bool(done.all()):
                break
        if last is not None and bool((last < 0).any()):
            raise NonFiniteLogitsError()
    finally:
        # Compiled, the caches and stacked copies stay for the next call's graph replay.
        remove_decode(model, keep_buffers=use_compile)
        if not use_compile:
            model.clear_cache()


def _windows(
    model: TransformerLM,
    prompt: torch.Tensor,
    num_new: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator,
    decoder: GraphedDecoder | None,
) -> Iterator[torch.Tensor]:
    """Yield ``num_new`` (B,) tokens, prefilling the window again each time the cache is full.

    Each round prefills ``window`` at positions 0..L-1 and decodes until the last position
    (``context_length - 1``) has been fed; the round's tokens then join the window, which is
    cut to its last ``slide_keep`` tokens. Memory stays bounded by the context length.
    """
    B, V = prompt.shape[0], model.config.vocab_size
    device, context_length = prompt.device, model.config.context_length
    keep = slide_keep(context_length)
    window, remaining, produced = prompt, num_new, 0  # window: (B, L), L <= context_length
    while True:
        L = window.shape[1]
        noise = None
        if temperature > 0:
            noise = exponential_noise((B, V), generator, device)
        input_pos = torch.arange(L, device=device)  # (L,)
        token = prefill(model, window, input_pos, temperature, top_k, top_p, noise)  # (B,)
        # Positions L..context_length-1 are free: that many more tokens can be fed and decoded.
        n_decode = min(remaining - 1, context_length - L)
        if decoder is not None:
            rest = decoder.run(token, input_pos[-1:] + 1, n_decode, generator)
        else:
            rest = decode_n_tokens(model, token, input_pos[-1:] + 1, n_decode, temperature, top_k, top_p, generator)
        round_tokens = [token]
        yield token
        for new in rest:
            round_tokens.append(new)
            yield new
        remaining -= 1 + n_decode
        new_ids = torch.stack(round_tokens, dim=1)  # (B, n_decode + 1)
        # Read back once per round (never per token): an INVALID_TOKEN must not be prefilled,
        # and a caller without stop ids learns here (or at the end) that a row went bad.
        bad = new_ids < 0  # (B, n)
        if bool(bad.any()):
            raise NonFiniteLogitsError(produced + int(bad.any(dim=0).nonzero()[0]))
        produced += new_ids.shape[1]
        if remaining <= 0:
            return
        window = torch.cat((window, new_ids), dim=1)[:, -keep:]  # (B, keep)


def _reuse_or_setup_cache(model: TransformerLM, batch_size: int, max_len: int) -> None:
    # Stale entries from an earlier call are harmless: every slot is rewritten before the
    # causal mask lets a query see it.
    cache = model.blocks[0].attn.kv_cache
    dtype = model.lm_head.weight.dtype
    stale = cache is None or cache.k.dtype != dtype or cache.k.device != model.lm_head.weight.device
    if stale or cache.k.shape[0] != batch_size or cache.max_len != max_len:
        model.setup_cache(batch_size, max_len=max_len)
