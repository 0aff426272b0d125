"""Sampling: hand-worked top-p/top-k sets, greedy, reproducibility, and the draw's distribution."""

from __future__ import annotations

import pytest
import torch

from lmkit.generation import INVALID_TOKEN, MIN_TEMPERATURE, exponential_noise, logits_to_probs, sample

# Logits whose softmax is exactly (0.5, 0.3, 0.15, 0.05), shuffled so order matters.
PROBS = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
LOGITS = PROBS.log()


def test_plain_softmax() -> None:
    torch.testing.assert_close(logits_to_probs(LOGITS), PROBS)


@pytest.mark.parametrize(
    ("top_p", "kept"),
    [
        (0.4, [1]),  # the most likely token alone already has 0.5 >= 0.4
        (0.75, [1, 3]),  # 0.5 + 0.3 = 0.8 >= 0.75
        (0.85, [1, 3, 0]),  # 0.95 >= 0.85
        (0.97, [1, 3, 0, 2]),
        (1e-9, [1]),  # always at least one token
    ],
)
def test_top_p_keeps_smallest_sufficient_set(top_p: float, kept: list[int]) -> None:
    probs = logits_to_probs(LOGITS, top_p=top_p)
    expected = torch.zeros_like(PROBS)
    expected[0, kept] = PROBS[0, kept] / PROBS[0, kept].sum()
    torch.testing.assert_close(probs, expected)


def test_top_k_keeps_exactly_k() -> None:
    torch.testing.assert_close(
        logits_to_probs(LOGITS, top_k=2), torch.tensor([[0.0, 0.5 / 0.8, 0.0, 0.3 / 0.8]])
    )
    tied = logits_to_probs(torch.zeros(1, 6), top_k=3)
    assert (tied > 0).sum() == 3
    torch.testing.assert_close(logits_to_probs(LOGITS, top_k=99), PROBS)  # k > V keeps all


def test_temperature_sharpens_and_flattens() -> None:
    cold, hot = logits_to_probs(LOGITS, temperature=0.5), logits_to_probs(LOGITS, temperature=2.0)
    assert cold[0, 1] > PROBS[0, 1] > hot[0, 1]
    torch.testing.assert_close(cold, (PROBS**2) / (PROBS**2).sum())


def test_temperature_zero_is_greedy() -> None:
    logits = torch.randn(5, 40)
    torch.testing.assert_close(sample(logits, temperature=0.0), logits.argmax(-1))
    assert torch.equal(logits_to_probs(logits, temperature=0.0).argmax(-1), logits.argmax(-1))
    assert (logits_to_probs(logits, temperature=0.0).sum(-1) == 1).all()


def test_top_k_never_samples_outside_top_k() -> None:
    torch.manual_seed(0)
    logits = torch.randn(64, 100)
    allowed = logits.topk(5, dim=-1).indices  # (64, 5)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        ids = sample(logits, temperature=1.5, top_k=5, generator=g)
        assert (allowed == ids[:, None]).any(-1).all()


def test_top_p_never_samples_outside_nucleus() -> None:
    g = torch.Generator().manual_seed(0)
    ids = sample(LOGITS.expand(2000, 4), top_p=0.75, generator=g)
    assert set(ids.tolist()) == {1, 3}


def test_seeded_sampling_is_reproducible() -> None:
    logits = torch.randn(8, 30)

    def draw(seed: int) -> torch.Tensor:
        return sample(logits, top_p=0.9, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(3), draw(3))
    assert not all(torch.equal(draw(3), draw(s)) for s in range(4, 8))


def test_draw_follows_the_distribution() -> None:
    """The exponential race picks token i with probability p_i."""
    g = torch.Generator().manual_seed(0)
    ids = sample(LOGITS.expand(20000, 4), generator=g)
    freq = torch.bincount(ids, minlength=4).float() / ids.numel()
    torch.testing.assert_close(freq, PROBS[0], atol=0.015, rtol=0)


def test_precomputed_noise_matches_generator() -> None:
    logits = torch.randn(4, 10)
    noise = exponential_noise((4, 10), torch.Generator().manual_seed(5))
    assert (noise > 0).all()
    assert torch.equal(
        sample(logits, noise=noise), sample(logits, generator=torch.Generator().manual_seed(5))
    )


@pytest.mark.parametrize(
    "bad", [dict(temperature=-1.0), dict(temperature=float("nan")), dict(temperature=float("inf")),
            dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5), dict(top_p=float("nan"))]
)
def test_rejects_bad_parameters(bad: dict) -> None:
    with pytest.raises(ValueError):
        sample(LOGITS, **bad)


def test_low_precision_logits() -> None:
    probs = logits_to_probs(LOGITS.to(torch.bfloat16), top_k=3)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0))


@pytest.mark.parametrize("temperature", [0.0, 1e-300, 1e-30, MIN_TEMPERATURE / 2])
def test_temperature_below_the_floor_is_greedy(temperature: float) -> None:
    logits = torch.randn(16, 50) * 20
    noise = exponential_noise((16, 50), torch.Generator().manual_seed(0))
    assert torch.equal(sample(logits, temperature, noise=noise), logits.argmax(-1))
    probs = logits_to_probs(logits, temperature)
    assert torch.isfinite(probs).all() and torch.equal(probs.argmax(-1), logits.argmax(-1))
    assert (probs.max(-1).values == 1).all()


def test_temperature_at_the_floor_still_samples() -> None:
    # Two tokens tied at the top: sampling picks either, greedy always the first.
    logits = torch.zeros(400, 3)
    logits[:, 2] = -1.0
    ids = sample(logits, MIN_TEMPERATURE, generator=torch.Generator().manual_seed(0))
    assert set(ids.tolist()) == {0, 1}


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1e-300])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_rows_are_marked_invalid(temperature: float, bad: float) -> None:
    logits = torch.randn(4, 10)
    logits[1, 3] = bad  # one poisoned score spoils its row only
    logits[2, :] = float("-inf")  # no score at all: no distribution either
    logits[3, 5] = float("-inf")  # one token ruled out: still a distribution
    ids = sample(logits, temperature, top_k=5 if temperature else None, generator=torch.Generator().manual_seed(1))
    assert ids[1] == INVALID_TOKEN and ids[2] == INVALID_TOKEN
    assert 0 <= ids[0] < 10 and 0 <= ids[3] < 10 and ids[3] != 5


def test_sample_traces_whole_with_a_symbolic_temperature() -> None:
    """The compiled decode step calls ``sample`` with the temperature as a (possibly symbolic)
    float; its argument checks must trace without a graph break (``math.isfinite`` did not: every
    compiled-decode test on the GPU failed), also once the value changes and dynamo generalises it."""
    import torch

    from lmkit.generation.sampling import sample

    step = torch.compile(lambda scores, t: sample(scores, t, None, None, noise=torch.ones_like(scores)), fullgraph=True, backend="eager")
    scores = torch.randn(2, 10)
    for t in (0.8, 0.9, 1.1):
        assert step(scores, t).tolist() == scores.argmax(-1).tolist()  # unit noise: the most likely id
