"""Turning next-token logits into token ids: temperature, top-k, top-p, sampling.

Notation used in shape comments:
    B  batch size (any leading shape works; B stands for all of it)
    V  vocab_size

Everything here stays on the device: no ``.item()``, ``.tolist()`` or data-dependent Python
branches. A host sync per token would stall the GPU until the token is known and would break
CUDA-graph capture of the decode step, so the random draw is done with the "exponential race"
(below) instead of anything that reads a value back. For the same reason a row whose scores are
not finite is not raised on here: ``sample`` marks it with the id ``INVALID_TOKEN`` (-1), and
the code that reads tokens back anyway (a stop check, the text stream) raises
``NonFiniteLogitsError`` on it.
"""

from __future__ import annotations

import math

import torch

from lmkit.errors import LmkitError

# Temperatures below this are greedy. At 1e-3 a logit lead of 0.01 is already a 22,000:1 odds
# ratio (e^10), so colder sampling differs from the argmax only on exact ties, while dividing by
# a far smaller temperature (1e-300 is 0 in float32) turns finite scores into inf and the
# softmax into NaN.
MIN_TEMPERATURE = 1e-3
# The id ``sample`` gives a row without a finite best score (a NaN, a +inf, or all -inf).
INVALID_TOKEN = -1


class NonFiniteLogitsError(LmkitError):
    """The model's next-token scores were NaN or infinite, so no token can be sampled."""

    def __init__(self, position: int | None = None) -> None:
        """Args:
        position: index of the first new token that could not be sampled, when known.
        """
        self.position = position
        where = "" if position is None else f" at generated token {position + 1}"
        super().__init__(
            f"the model's next-token scores are not finite (NaN or inf){where}, "
            "so nothing sensible can be sampled: its weights are probably damaged (a run that diverged; "
            "check them with `lmkit ckpt inspect`) or overflow in this dtype (try --dtype float32)"
        )


def effective_temperature(temperature: float) -> float:
    """``temperature``, or 0 (greedy) when it is below ``MIN_TEMPERATURE``."""
    return 0.0 if temperature < MIN_TEMPERATURE else temperature


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise ``ValueError`` unless 0 <= temperature < inf, top_k >= 1 and 0 < top_p <= 1 (None allowed).

    Checks Python numbers only, so it costs no device sync. NaN fails every bound. Plain
    comparisons, not ``math.isfinite``: inside the compiled decode step the temperature can be a
    symbolic float, which comparisons handle and ``math.isfinite`` does not.
    """
    if not 0 <= temperature < math.inf:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def logits_to_probs(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """Next-token probabilities after temperature, top-k and then top-p filtering.

    Example: probabilities (0.5, 0.3, 0.15, 0.05) with ``top_p=0.75`` keep the first two
    (0.5 + 0.3 >= 0.75) and renormalise them to (0.625, 0.375, 0, 0).

    Args:
        logits: (B, V) unnormalised scores (any float dtype; the math is done in fp32).
        temperature: divides the logits; below 1 sharpens, above 1 flattens. 0 means greedy:
            all the mass on the argmax; so does anything below ``MIN_TEMPERATURE``.
        top_k: keep only the k highest-scoring tokens (None: all). Exactly k survive even
            when scores tie.
        top_p: keep the smallest set of most likely tokens whose total probability is
            >= top_p (None: all). The most likely token always survives.

    Returns:
        (B, V) float32 probabilities summing to 1 over V.

    Raises:
        ValueError: on a negative temperature, top_k < 1 or top_p outside (0, 1].
    """
    check_sampling_args(temperature, top_k, top_p)
    temperature = effective_temperature(temperature)
    logits = logits.float()
    if temperature == 0:
        # Greedy as a distribution: a one-hot at the argmax.
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        values, indices = torch.topk(logits, top_k, dim=-1)  # (B, k) each
        logits = torch.full_like(logits, float("-inf")).scatter_(-1, indices, values)
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    if top_p is not None and top_p < 1:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)  # (B, V) each
        # Mass strictly before each token: a token is needed while that is still short of p,
        # so the first (largest) token, with 0 before it, is always kept.
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # (B, V)
        sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)  # back to vocab order
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def exponential_noise(
    shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Independent Exponential(1) draws for the exponential race in ``sample``.

    Drawn separately so a compiled decode step can take the noise as an input and keep the
    random-number generator (which ``torch.compile`` cannot trace) outside the graph.

    Args:
        shape: (B, V), the shape of the logits.
        generator: source of randomness (None: torch's global generator).
        device: where to draw (must match the generator's device).
        out: a float32 tensor of ``shape`` to fill in place instead (same draws).

    Returns:
        float32 tensor of ``shape``, strictly positive.
    """
    noise = torch.empty(shape, device=device, dtype=torch.float32) if out is None else out
    noise.exponential_(generator=generator)
    # Guard against an exact zero draw, which would turn a zero-probability token into 0/0.
    return noise.clamp_min_(torch.finfo(torch.float32).tiny)


def sample(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw the next token id of each row.

    Uses the exponential race: ``argmax(p_i / E_i)`` with ``E_i ~ Exponential(1)`` picks token
    i with probability exactly ``p_i``, without a cumulative-sum search or a read-back to the
    host, and tokens filtered to probability 0 can never win.

    Args:
        logits: (B, V) unnormalised scores.
        temperature: see ``logits_to_probs``; 0 returns the argmax and draws nothing.
        top_k: see ``logits_to_probs``.
        top_p: see ``logits_to_probs``.
        generator: seeded generator for reproducible draws (None: the global one).
        noise: (B, V) precomputed ``exponential_noise``; when given, ``generator`` is unused.

    Returns:
        (B,) long token ids, on the logits' device; ``INVALID_TOKEN`` for a row whose scores
        (greedy) or probabilities (sampling) hold a NaN or +inf, or are all -inf. The caller raises on it when
        it reads the tokens back, instead of a host sync here (see the module docstring).
    """
    check_sampling_args(temperature, top_k, top_p)
    temperature = effective_temperature(temperature)
    if temperature == 0:
        scores = logits
    else:
        scores = logits_to_probs(logits, temperature, top_k, top_p)  # (B, V) probabilities
        if noise is None:
            noise = exponential_noise(scores.shape, generator, scores.device)
    # The row's maximum is finite unless a score is NaN (max propagates it) or +inf, or every
    # score is -inf; single -inf scores (tokens ruled out) are fine.
    usable = torch.isfinite(scores.amax(dim=-1))  # (B,)
    token = (scores if temperature == 0 else scores / noise).argmax(dim=-1)  # (B,)
    return torch.where(usable, token, INVALID_TOKEN)
