"""Greedy (or sampled) generation until a stop string, for the harness's ``generate_until``.

Requests with prompts of the same length and the same settings are decoded together as one
(B, T) batch on lmkit's KV-cached ``generate``; each row ends at its first stop string or at
end-of-text, and the batch ends when every row has. Prompts are left-truncated to
``max_length - max_new_tokens`` tokens (at least one), as the harness's own models do, so the
prompt and its continuation fit in the context; past it, the window slides (see
``lmkit.generation.generate``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmkit.generation import INVALID_TOKEN, NonFiniteLogitsError, Utf8StreamDecoder
from lmkit.generation import generate as generate_ids
from lmkit.model import TransformerLM
from lmkit.tokenizer import Tokenizer


@dataclass(frozen=True)
class UntilRequest:
    """One continuation to generate."""

    prompt_ids: tuple[int, ...]  # already left-truncated to fit (see ``truncate_prompt``)
    until: tuple[str, ...]  # stop strings; neither they nor what follows is returned
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy


def truncate_prompt(ids: Sequence[int], max_length: int, max_new_tokens: int) -> tuple[int, ...]:
    """The last ``max(1, max_length - max_new_tokens)`` ids of a prompt.

    Example: ``truncate_prompt([1, 2, 3, 4], 5, 3)`` -> ``(3, 4)``.
    """
    return tuple(ids[-max(1, max_length - max_new_tokens) :])


def cut_at_stop(text: str, until: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to its earliest stop string, and whether one was found.

    Example: ``cut_at_stop("4\\n\\nQ:", ["\\n\\n"])`` -> ``("4", True)``.
    """
    hits = [i for i in (text.find(s) for s in until if s) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def generate_until(
    model: TransformerLM,
    tokenizer: Tokenizer,
    requests: Sequence[UntilRequest],
    *,
    eot_id: int | None,
    batch_size: int,
    compile_decode: bool = False,
    seed: int = 1234,
) -> list[str]:
    """The continuation of every request, batched by prompt length and settings.

    Args:
        model: the language model, in eval mode, on its device.
        tokenizer: decodes the generated ids.
        requests: what to generate; each prompt non-empty.
        eot_id: end-of-text id, which also ends a row (None: none).
        batch_size: rows decoded together at most.
        compile_decode: decode with the CUDA-graph step (CUDA only; see ``generate``).
        seed: seeds sampling, for requests with a temperature above 0.

    Returns:
        The generated text of each request, in order, cut before its first stop string.

    Raises:
        NonFiniteLogitsError: the model's scores turned NaN or infinite.
    """
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault((len(r.prompt_ids), r.until, r.max_new_tokens, r.temperature), []).append(i)
    out = [""] * len(requests)
    for key, members in groups.items():
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            texts = _generate_batch(model, tokenizer, [requests[i] for i in chunk], eot_id, compile_decode, seed)
            for i, text in zip(chunk, texts):
                out[i] = text
    return out


def _generate_batch(
    model: TransformerLM,
    tokenizer: Tokenizer,
    batch: list[UntilRequest],
    eot_id: int | None,
    compile_decode: bool,
    seed: int,
) -> list[str]:
    # generate_until's body for requests of one prompt length and one set of settings.
    first = batch[0]
    prompt = torch.tensor([r.prompt_ids for r in batch], dtype=torch.long)  # (B, T)
    stops = [eot_id] if eot_id is not None else []
    tokens = generate_ids(model, prompt, first.max_new_tokens, first.temperature, stop_ids=stops, seed=seed,
                          compile_decode=compile_decode)
    decoders = [Utf8StreamDecoder() for _ in batch]
    texts = [""] * len(batch)
    done = [False] * len(batch)
    try:
        for step, new in enumerate(tokens):
            for b, token in enumerate(new.tolist()):  # (B,) -> host: stop strings are checked on text
                if done[b]:
                    continue
                if token == INVALID_TOKEN:
                    raise NonFiniteLogitsError(step)
                if token == eot_id:
                    done[b] = True
                    continue
                texts[b] += decoders[b].decode(tokenizer.vocab.get(token, b""))
                texts[b], done[b] = cut_at_stop(texts[b], first.until)
            if all(done):
                break
    finally:
        tokens.close()  # frees the KV cache at once when every row stopped early
    for b in range(len(batch)):
        if not done[b]:
            texts[b] = cut_at_stop(texts[b] + decoders[b].flush(), first.until)[0]
    return texts
