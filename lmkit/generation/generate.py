"""Autoregressive generation with a KV cache: prefill, decode one token, decode n, generate.

Notation used in shape comments:
    B  batch size (sequences generated together)
    T  prompt length
    V  vocab_size

The prompt is run once through the model (prefill), filling every layer's KV cache; each
further token is then a forward pass over a single position that attends over the cache. The
cache has a fixed size for the whole call, so the decode step has static shapes and can be
compiled with CUDA graphs (``compile_decode=True``).

Generation stops at the context length; it does not slide the window. The last token produced
is predicted from ``context_length`` positions, so at most ``context_length - T + 1`` tokens
follow a prompt of length T.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from lmkit.generation.cuda_graph import decoder_for
from lmkit.generation.sampling import check_sampling_args, exponential_noise, sample
from lmkit.model import TransformerLM

DecodeFn = Callable[..., torch.Tensor]


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
        (B,) the next token of each sequence.
    """
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
) -> Iterator[torch.Tensor]:
    """Stream new tokens after a prompt.

    Arguments are checked at call time; the work starts when the iterator is first advanced.
    The model gets a fresh KV cache then, dropped again when the iterator finishes or is
    closed. (With ``compile_decode`` on CUDA the cache stays on the model for the next call so
    the captured graph can be replayed; ``model.clear_cache()`` frees it.) Greedy decoding
    (temperature 0) is deterministic; sampling with a ``seed`` is reproducible on the same
    device and torch version.

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
        seed: seeds the sampling noise (None: a fresh random seed).
        device: where to run (default: the model's device; the model is not moved, so a
            different device is an error).
        compile_decode: on CUDA, decode with a CUDA-graph compiled step; ignored
            on other devices.

    Returns:
        An iterator of (B,) long tensors, the new token of every sequence, each yielded as soon
        as it is produced. It ends at ``max_new_tokens``, when all sequences have hit a stop
        id, or at the context length (``context_length - T + 1`` tokens; the window does not
        slide).

    Raises:
        ValueError: empty or out-of-vocabulary prompt, a prompt longer than the context, a
            negative max_new_tokens, a device other than the model's, or bad sampling
            parameters.
    """
    model_device = next(model.parameters()).device
    if device is not None:
        wanted = torch.device(device)
        if wanted.type != model_device.type or wanted.index not in (None, model_device.index):
            raise ValueError(f"the model is on {model_device}, not {wanted}; move it first")
    prompt = _as_batch(prompt_ids, model_device)  # (B, T)
    T = prompt.shape[1]
    context_length, vocab_size = model.config.context_length, model.config.vocab_size
    if T > context_length:
        raise ValueError(f"prompt of {T} tokens exceeds context_length {context_length}")
    # One read-back of the prompt (it came from the host anyway) to fail clearly on bad ids.
    if bool((prompt < 0).any() | (prompt >= vocab_size).any()):
        raise ValueError(f"prompt_ids must be token ids in 0..{vocab_size - 1}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    check_sampling_args(temperature, top_k, top_p)
    generator = torch.Generator(device=model_device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return _stream(
        model, prompt, min(max_new_tokens, context_length - T + 1), temperature, top_k, top_p,
        torch.tensor(list(stop_ids), dtype=torch.long, device=model_device), generator,
        compile_decode and model_device.type == "cuda",
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
        decoder = decoder_for(model, B, temperature, top_k, top_p)  # before prefill: see there
    else:
        model.setup_cache(B, max_len=min(context_length, T + num_new - 1))
    try:
        noise = None
        if temperature > 0:
            noise = exponential_noise((B, model.config.vocab_size), generator, device)
        input_pos = torch.arange(T, device=device)  # (T,)
        token = prefill(model, prompt, input_pos, temperature, top_k, top_p, noise)  # (B,)
        if decoder is not None:
            rest = decoder.run(token, input_pos[-1:] + 1, num_new - 1, generator)
        else:
            rest = decode_n_tokens(model, token, input_pos[-1:] + 1, num_new - 1, temperature, top_k, top_p, generator)
        if stops.numel() == 0:
            yield from _chain_first(token, rest)
            return
        done = torch.zeros(B, dtype=torch.bool, device=device)
        last = token
        for new in _chain_first(token, rest):
            # Finished sequences keep repeating their stop id, so every entry stays a valid id.
            new = torch.where(done, last, new)
            yield new
            last = new
            done |= torch.isin(new, stops)
            # The one host sync per token: streaming reads each token back anyway, and this is
            # what lets the loop end early.
            if bool(done.all()):
                break
    finally:
        if not use_compile:
            model.clear_cache()


def _reuse_or_setup_cache(model: TransformerLM, batch_size: int, max_len: int) -> None:
    # Stale entries from an earlier call are harmless: every slot is rewritten before the
    # causal mask lets a query see it.
    cache = model.blocks[0].attn.kv_cache
    dtype = model.lm_head.weight.dtype
    stale = cache is None or cache.k.dtype != dtype or cache.k.device != model.lm_head.weight.device
    if stale or cache.k.shape[0] != batch_size or cache.max_len != max_len:
        model.setup_cache(batch_size, max_len=max_len)
    else:
        model.refresh_decode_weights()  # the weights may have changed since (e.g. training)


def _chain_first(first: torch.Tensor, rest: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
    yield first
    yield from rest
