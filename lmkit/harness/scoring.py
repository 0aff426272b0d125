"""Batched log-likelihood of continuations, on lmkit's forward (no lm-eval import).

Notation used in shape comments:
    B  sequences in a batch
    L  the longest input of the batch (<= max_length)
    N  continuation tokens of the whole batch
    D  d_model
    V  vocab_size

A request is a pair of token lists ``(context, continuation)``; its score is the summed
log-probability of the continuation given the context, and whether greedy decoding would have
produced it. The model reads ``(context + continuation)[:-1]`` and the last ``len(continuation)``
positions predict the continuation. Three things make this faster than scoring every position:

- requests are sorted by length, longest first, so a batch pads little (and a batch that does
  not fit in memory fails at once, not after an hour);
- the LM head and log-softmax run only on the continuation's positions (a few rows per request),
  never on the (B, L, V) logits of the whole batch;
- requests whose model inputs are identical (a multiple-choice question whose choices are one
  token each) share one row of the batch.

Left truncation: when context and continuation together are longer than ``max_length + 1``
tokens, the oldest context tokens are dropped, so the continuation is scored from the last
``max_length`` tokens before it (what the harness's own models do). A continuation longer than
``max_length`` cannot be scored whole and is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from lmkit.errors import DataError
from lmkit.model import TransformerLM

Pair = tuple[Sequence[int], Sequence[int]]


def model_input(context: Sequence[int], continuation: Sequence[int], max_length: int) -> tuple[int, ...]:
    """The ids the model reads for one request: ``(context + continuation)[:-1]``, left-truncated.

    Example: context ``[1, 2, 3]``, continuation ``[4, 5]`` and ``max_length=3`` give ``(2, 3, 4)``:
    the model predicts 4 from ``(2, 3)`` and 5 from ``(2, 3, 4)``.

    Raises:
        DataError: an empty continuation or context, or a continuation longer than ``max_length``.
    """
    if not continuation or not context:
        raise DataError("a request has an empty context or continuation; the task's documents give no text to score")
    if len(continuation) > max_length:
        raise DataError(
            f"a continuation of {len(continuation)} tokens is longer than the model's context of {max_length} tokens; "
            "it cannot be scored whole (use a task with shorter targets, or a model with a longer context)"
        )
    return tuple((list(context) + list(continuation))[-(max_length + 1) : -1])


def score_pairs(
    model: TransformerLM,
    pairs: Sequence[Pair],
    *,
    max_length: int,
    batch_size: int,
    autocast_dtype: torch.dtype | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[float, bool]]:
    """Log-likelihood of each continuation given its context, in batches sorted by length.

    Args:
        model: the language model, in eval mode (its weights as they should be used).
        pairs: ``(context_ids, continuation_ids)`` per request; both non-empty.
        max_length: the longest input the model reads (at most its ``context_length``).
        batch_size: distinct model inputs per forward pass.
        autocast_dtype: run the forward under autocast in this dtype (None: the weights' dtype).
            The log-softmax is computed in float32 either way.
        progress: called with the number of requests finished after each batch.

    Returns:
        ``(logprob, is_greedy)`` per request, in the order of ``pairs``.

    Raises:
        DataError: see ``model_input``.
        ValueError: ``batch_size`` < 1 or ``max_length`` beyond the model's context.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 1 <= max_length <= model.config.context_length:
        raise ValueError(f"max_length must be in 1..{model.config.context_length}, got {max_length}")
    inputs = [model_input(ctx, cont, max_length) for ctx, cont in pairs]
    rows: dict[tuple[int, ...], list[int]] = {}  # distinct input -> the requests that read it
    for i, inp in enumerate(inputs):
        rows.setdefault(inp, []).append(i)
    order = sorted(rows, key=lambda inp: (-len(inp), inp))  # longest first: little padding per batch
    out: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
    done = 0
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        members = [(b, i) for b, inp in enumerate(batch) for i in rows[inp]]
        targets = [list(pairs[i][1]) for _, i in members]
        logprob, greedy = _score_batch(model, batch, members, targets, autocast_dtype)
        for (_, i), lp, g in zip(members, logprob.tolist(), greedy.tolist()):  # one read-back per batch
            out[i] = (lp, bool(g))
        done += len(members)
        if progress is not None:
            progress(done)
    return out


@torch.inference_mode()
def _score_batch(
    model: TransformerLM,
    batch: list[tuple[int, ...]],
    members: list[tuple[int, int]],
    targets: list[list[int]],
    autocast_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability and greediness of each member's continuation, on the device.

    ``batch`` holds the distinct inputs (longest first); ``members`` pairs each request with the
    row it reads; ``targets`` are the requests' continuations.
    """
    device = next(model.parameters()).device
    B, L = len(batch), len(batch[0])
    # Right padding (id 0): causal attention never lets a real position see a pad after it.
    x = torch.zeros(B, L, dtype=torch.long)
    for b, inp in enumerate(batch):
        x[b, : len(inp)] = torch.tensor(inp)
    # The positions that predict each continuation token: the last len(target) of its row.
    row_idx, pos_idx, owner, tgt = [], [], [], []
    for m, ((b, _), target) in enumerate(zip(members, targets)):
        n, end = len(target), len(batch[b])
        row_idx += [b] * n
        pos_idx += range(end - n, end)
        owner += [m] * n
        tgt += target
    row_t, pos_t, tgt_t, owner_t = (torch.tensor(v, dtype=torch.long).to(device, non_blocking=True)
                                    for v in (row_idx, pos_idx, tgt, owner))
    x = x.to(device, non_blocking=True)
    autocast = autocast_dtype is not None and autocast_dtype != next(model.parameters()).dtype
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast):
        h = model.hidden(x)  # (B, L, D)
        logits = model.lm_head(h[row_t, pos_t])  # (N, V): only the continuation's positions
    logp = F.log_softmax(logits.float(), dim=-1)  # (N, V) in fp32
    tok_logp = logp.gather(1, tgt_t[:, None]).squeeze(1)  # (N,)
    hit = (logp.argmax(dim=-1) == tgt_t).float()  # (N,)
    M = len(members)
    total = torch.zeros(M, dtype=torch.float64, device=device).index_add_(0, owner_t, tok_logp.double())  # (M,)
    misses = torch.zeros(M, device=device).index_add_(0, owner_t, 1.0 - hit)  # (M,)
    return total.cpu(), (misses == 0).cpu()
