"""generate(): against repeated full forward passes, the sliding window, stopping rules, seeds,
non-finite scores, compile-friendliness."""

from __future__ import annotations

import itertools

import pytest
import torch

from lmkit.generation import (
    INVALID_TOKEN,
    NonFiniteLogitsError,
    decode_one_token,
    exponential_noise,
    generate,
    prefill,
    sample,
    slide_keep,
)
from lmkit.model import ModelConfig, TransformerLM

TINY = dict(vocab_size=40, context_length=20, d_model=32, num_layers=2, num_heads=4, d_ff=48)


@pytest.fixture
def model() -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(ModelConfig(**TINY))


def greedy_by_full_forward(model: TransformerLM, prompt: torch.Tensor, n: int) -> torch.Tensor:
    seq = prompt
    for _ in range(n):
        nxt = model(seq)[:, -1].argmax(-1)  # (B,)
        seq = torch.cat((seq, nxt[:, None]), dim=1)
    return seq[:, prompt.shape[1] :]


def run(model: TransformerLM, prompt, n: int, **kw) -> torch.Tensor:
    return torch.stack(list(generate(model, prompt, n, **kw)), dim=1)  # (B, steps)


def test_greedy_equals_repeated_full_forward(model: TransformerLM) -> None:
    prompt = torch.randint(0, 40, (3, 5))
    with torch.no_grad():
        expected = greedy_by_full_forward(model, prompt, 8)
    torch.testing.assert_close(run(model, prompt, 8, temperature=0.0), expected)
    assert not model.has_cache  # the cache lives only for the call


def test_list_prompt_and_streaming(model: TransformerLM) -> None:
    it = generate(model, [1, 2, 3], 4, temperature=0.0)
    first = next(it)  # produced before the rest is computed
    assert first.shape == (1,) and first.dtype == torch.long
    assert len(list(it)) == 3


def test_temperature_zero_is_deterministic(model: TransformerLM) -> None:
    prompt = [5, 6, 7]
    first, again = run(model, prompt, 6, temperature=0.0), run(model, prompt, 6, temperature=0.0)
    assert torch.equal(first, again)


def test_seed_reproducible(model: TransformerLM) -> None:
    kw = dict(temperature=1.5, top_k=20, top_p=0.95)
    a = run(model, [1, 2], 10, seed=7, **kw)
    assert torch.equal(a, run(model, [1, 2], 10, seed=7, **kw))
    assert not all(torch.equal(a, run(model, [1, 2], 10, seed=s, **kw)) for s in range(8, 12))


def test_window_stop_ends_at_context_length(model: TransformerLM) -> None:
    prompt = torch.randint(0, 40, (1, 15))
    out = run(model, prompt, 100, temperature=0.0, window="stop")
    assert out.shape == (1, 20 - 15 + 1)  # the last token is predicted from a full window
    with torch.no_grad():
        torch.testing.assert_close(out, greedy_by_full_forward(model, prompt, 6))


def test_rejects_bad_prompts(model: TransformerLM) -> None:
    for bad in ([], [3, 40], [-1], torch.zeros(2, 0, dtype=torch.long)):
        with pytest.raises(ValueError):
            generate(model, bad, 3)  # checked at call time, before any work
    with pytest.raises(ValueError, match="exceeds context_length"):
        generate(model, torch.zeros(1, 21, dtype=torch.long), 3, window="stop")
    with pytest.raises(ValueError, match="window"):
        generate(model, [1], 3, window="roll")


def first_hit(row: torch.Tensor, stop: int) -> int | None:
    hits = (row == stop).nonzero()
    return int(hits[0]) if hits.numel() else None


def test_stop_ids_end_each_sequence(model: TransformerLM) -> None:
    prompt = torch.randint(0, 40, (2, 3))
    free = run(model, prompt, 10, temperature=0.0)  # (2, 10)
    stop = int(free[0, 2])  # sequence 0 emits this by step 2 (sequence 1 maybe never)
    out = run(model, prompt, 10, temperature=0.0, stop_ids=(stop,))
    ends = []
    for b in range(2):
        first = first_hit(free[b], stop)
        if first is None:
            torch.testing.assert_close(out[b], free[b, : out.shape[1]])
            ends.append(9)
        else:
            torch.testing.assert_close(out[b, : first + 1], free[b, : first + 1])
            assert (out[b, first:] == stop).all()  # a stopped sequence repeats its stop id
            ends.append(first)
    assert out.shape[1] == max(ends) + 1  # ends once every sequence has stopped


def test_single_sequence_stops_right_after_stop_id(model: TransformerLM) -> None:
    free = run(model, [1, 2, 3], 10, temperature=0.0)[0]
    stop = int(free[4])
    out = run(model, [1, 2, 3], 10, temperature=0.0, stop_ids=(stop, 39))[0]
    first = min(int((free == s).nonzero()[0]) for s in (stop, 39) if (free == s).any())
    torch.testing.assert_close(out, free[: first + 1])


def test_closing_early_drops_the_cache(model: TransformerLM) -> None:
    it = generate(model, [1, 2], 10)
    next(it)
    assert model.has_cache
    it.close()
    assert not model.has_cache


def test_decode_step_traces_as_one_graph(model: TransformerLM) -> None:
    """fullgraph=True must hold for compile_decode's CUDA-graph path; checked here with the
    eager backend (tracing only, no compiler needed)."""
    torch._dynamo.reset()
    step = torch.compile(decode_one_token, backend="eager", fullgraph=True)
    prompt = torch.randint(0, 40, (2, 4))
    model.setup_cache(2, max_len=20)
    with torch.no_grad():
        tok = prefill(model, prompt, torch.arange(4), temperature=0.0)
        ref = model(torch.cat((prompt, tok[:, None]), 1), torch.arange(5))[:, -1]
        noise = torch.ones(2, 40)
        got = step(model, tok, torch.tensor([4]), 1.0, 5, 0.9, noise)
    torch.testing.assert_close(got, ref.argmax(-1))  # unit noise: the race picks the mode


def sliding_reference(model: TransformerLM, prompt: torch.Tensor, n: int, temperature: float = 0.0,
                      seed: int = 0, top_k: int | None = None) -> torch.Tensor:
    """The sliding window by full forward passes: each token sampled from ``model(window)``.

    The window grows to the context length, then restarts from its last ``slide_keep`` tokens;
    one noise draw per token, in order, as generate() makes them.
    """
    ctx = model.config.context_length
    g = torch.Generator().manual_seed(seed)
    seq, start = prompt[:, -ctx:], 0  # a longer prompt keeps its last context_length tokens
    with torch.no_grad():
        for _ in range(n):
            if seq.shape[1] - start > ctx:
                start = seq.shape[1] - slide_keep(ctx)
            logits = model(seq[:, start:])[:, -1]  # (B, V)
            noise = exponential_noise(logits.shape, g) if temperature > 0 else None
            nxt = sample(logits, temperature, top_k, noise=noise)
            seq = torch.cat((seq, nxt[:, None]), dim=1)
    return seq[:, -n:]


def test_slide_keep() -> None:
    assert [slide_keep(c) for c in (1, 2, 3, 4, 20, 128)] == [1, 1, 2, 3, 15, 96]


@pytest.mark.parametrize("T", [1, 5, 19, 20])
def test_greedy_slides_past_the_context_like_a_full_forward(model: TransformerLM, T: int) -> None:
    """Several slides (context 20 keeps 15: a re-prefill every 5 tokens), a batch of 3."""
    prompt = torch.randint(0, 40, (3, T))
    out = run(model, prompt, 47, temperature=0.0)
    assert out.shape == (3, 47)
    torch.testing.assert_close(out, sliding_reference(model, prompt, 47))
    assert not model.has_cache


def test_sampling_slides_like_a_full_forward(model: TransformerLM) -> None:
    prompt = torch.randint(0, 40, (2, 6))
    kw = dict(temperature=1.3, top_k=30, seed=11)
    torch.testing.assert_close(run(model, prompt, 40, **kw), sliding_reference(model, prompt, 40, **kw))


def test_long_prompt_keeps_its_last_context_length_tokens(model: TransformerLM) -> None:
    prompt = torch.randint(0, 40, (1, 57))
    out = run(model, prompt, 12, temperature=0.0)
    torch.testing.assert_close(out, run(model, prompt[:, -20:], 12, temperature=0.0))
    torch.testing.assert_close(out, sliding_reference(model, prompt, 12))


def test_stop_ids_after_a_slide(model: TransformerLM) -> None:
    prompt = torch.randint(0, 40, (1, 4))
    free = run(model, prompt, 60, temperature=0.0)[0]
    stop = int(free[45])  # the first hit may come earlier; it must still end there
    first = int((free == stop).nonzero()[0])
    out = run(model, prompt, 60, temperature=0.0, stop_ids=[stop])[0]
    torch.testing.assert_close(out, free[: first + 1])


def test_huge_max_new_tokens_allocates_only_the_context(model: TransformerLM) -> None:
    it = generate(model, [1, 2, 3], 10**18, temperature=0.0)
    got = list(itertools.islice(it, 70))  # far past the context of 20
    assert model.blocks[0].attn.kv_cache.max_len == 20  # not proportional to max_new_tokens
    it.close()
    torch.testing.assert_close(torch.stack(got, 1), sliding_reference(model, torch.tensor([[1, 2, 3]]), 70))


def nan_model(model: TransformerLM) -> TransformerLM:
    with torch.no_grad():
        model.blocks[1].ffn.w2.weight.fill_(float("nan"))  # as a diverged run's checkpoint
    return model


@pytest.mark.parametrize("stop_ids", [(), (5,)])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_non_finite_scores_raise_instead_of_yielding_tokens(model, stop_ids, temperature) -> None:
    it = generate(nan_model(model), torch.randint(0, 40, (2, 3)), 30, temperature=temperature, stop_ids=stop_ids)
    got = []
    with pytest.raises(NonFiniteLogitsError, match="not finite"):
        for t in it:
            got.append(t)
    # No sync of its own: the rows are marked (never valid-looking ids) until a read-back raises,
    # here once every row has gone bad (stop ids) or at the end of the round.
    assert got and all(bool((t == INVALID_TOKEN).all()) for t in got)
    assert len(got) == (1 if stop_ids else 18)  # 18 = 20 - 3 + 1, the first round
    assert not model.has_cache


@pytest.mark.parametrize("stop_ids", [(), (39,)])
def test_one_row_going_bad_raises_by_the_next_slide(model: TransformerLM, stop_ids: tuple) -> None:
    """Row 1's prompt holds a token whose embedding is NaN: row 0 generates normally, row 1
    is marked, and the error comes when the window would slide (or row 0 stops first)."""
    with torch.no_grad():
        model.tok_embeddings.weight[7].fill_(float("nan"))
    prompt = torch.tensor([[1, 2, 3], [1, 7, 3]])
    got = []
    with pytest.raises(NonFiniteLogitsError, match="not finite"):
        for t in generate(model, prompt, 50, temperature=0.0, stop_ids=stop_ids):
            got.append(t)
    assert 1 <= len(got) <= 18 and all(int(t[1]) == INVALID_TOKEN for t in got)
    assert all(0 <= int(t[0]) < 40 for t in got)
    if not stop_ids:
        assert len(got) == 18  # the whole first round: 20 - 3 + 1 tokens


@pytest.mark.parametrize("temperature", [1e-300, 1e-30, 1e-4])
def test_temperature_below_the_floor_is_greedy(model: TransformerLM, temperature: float) -> None:
    prompt = torch.randint(0, 40, (2, 4))
    greedy = run(model, prompt, 30, temperature=0.0)
    for seed in (0, 1):
        torch.testing.assert_close(run(model, prompt, 30, temperature=temperature, seed=seed), greedy)


@pytest.mark.parametrize("seed", [0, 2**63 - 1, 2**63, 2**64 - 1, 2**64 + 3, 10**23, -1])
def test_any_int_seed_works(model: TransformerLM, seed: int) -> None:
    out = run(model, [1, 2], 5, temperature=1.0, seed=seed)
    assert torch.equal(out, run(model, [1, 2], 5, temperature=1.0, seed=seed % 2**64))


@pytest.mark.parametrize("stacked", [True, False])
def test_decode_kernels_plan_gives_the_full_forward_tokens(model: TransformerLM, stacked: bool) -> None:
    """With the stacked decode weights on (the default) or off, greedy tokens are the full
    forward's, and the model is left with its plain layers and no stacked copies."""
    from lmkit.kernels import KernelPlan
    from lmkit.model import CausalSelfAttention, SwiGLU

    prompt = torch.randint(0, model.config.vocab_size, (2, 5))
    plan = KernelPlan(stacked_decode_weights=stacked)
    got = torch.stack(list(generate(model, prompt, 8, temperature=0.0, kernels=plan)), dim=1)
    torch.testing.assert_close(got, greedy_by_full_forward(model, prompt, 8))
    block = model.blocks[0]
    assert type(block.attn) is CausalSelfAttention and type(block.ffn) is SwiGLU
    assert not hasattr(block.attn, "qkv_weight") and not model.has_cache
