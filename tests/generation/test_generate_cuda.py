"""CUDA-only checks of generation: the compiled (CUDA-graph) decode step and bf16 caches."""

from __future__ import annotations

import pytest
import torch

from lmkit.generation import NonFiniteLogitsError, generate
from lmkit.generation.cuda_graph import _addresses, _decoders
from lmkit.kernels import KernelPlan
from lmkit.model import ModelConfig, TransformerLM

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

SMALL = dict(vocab_size=256, context_length=64, d_model=64, num_layers=2, num_heads=4, d_ff=160)


def tokens(model: TransformerLM, prompt: torch.Tensor, n: int, **kw) -> torch.Tensor:
    return torch.stack(list(generate(model, prompt, n, **kw)), dim=1).cpu()  # (B, steps)


@pytest.fixture
def model() -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(ModelConfig(**SMALL)).cuda()


def test_compiled_decode_matches_eager(model: TransformerLM) -> None:
    prompt = torch.randint(0, 256, (2, 7))
    eager = tokens(model, prompt, 20, temperature=0.0)
    compiled = tokens(model, prompt, 20, temperature=0.0, compile_decode=True)
    torch.testing.assert_close(compiled, eager)
    # A second call with another prompt length replays the same graph and cache.
    prompt2 = torch.randint(0, 256, (2, 11))
    torch.testing.assert_close(
        tokens(model, prompt2, 20, temperature=0.0, compile_decode=True),
        tokens(model, prompt2, 20, temperature=0.0),
    )
    model.clear_cache()


def test_compiled_sampling_is_seeded(model: TransformerLM) -> None:
    prompt = torch.randint(0, 256, (1, 5))
    kw = dict(temperature=0.9, top_k=50, top_p=0.9, seed=3, compile_decode=True)
    torch.testing.assert_close(tokens(model, prompt, 30, **kw), tokens(model, prompt, 30, **kw))
    model.clear_cache()


def test_bf16_model_generates(model: TransformerLM) -> None:
    model = model.to(torch.bfloat16)
    out = tokens(model, torch.randint(0, 256, (3, 4)), 10, temperature=0.8, seed=0)
    assert out.shape == (3, 10) and int(out.max()) < 256


def test_captured_decoder_follows_weight_changes(model: TransformerLM) -> None:
    """The captured graph reads the weights in place: an update (a training step, a loaded
    state dict) shows in the next generation, and a dtype change recaptures."""
    prompt = torch.randint(0, 256, (1, 6))
    tokens(model, prompt, 5, temperature=0.0, compile_decode=True)  # capture
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    torch.testing.assert_close(
        tokens(model, prompt, 15, temperature=0.0, compile_decode=True), tokens(model, prompt, 15, temperature=0.0)
    )
    # A dtype change reallocates the weights: the old graph is dropped and a new one captured.
    # (bf16 compiled and eager numerics differ, so only validity is compared here.)
    model = model.to(torch.bfloat16)
    out = tokens(model, prompt, 15, temperature=0.0, compile_decode=True)
    assert out.shape == (1, 15) and int(out.max()) < 256
    assert [key[0] for key in _decoders[model]] == [_addresses(model)]
    model.clear_cache()


def test_captured_decoder_stops_and_closes_early(model: TransformerLM) -> None:
    prompt = torch.randint(0, 256, (1, 6))
    eager = tokens(model, prompt, 12, temperature=0.0)[0].tolist()
    stop = eager[4]
    got = [int(t) for t in generate(model, prompt, 12, temperature=0.0, stop_ids=[stop], compile_decode=True)]
    assert got == eager[: eager.index(stop) + 1]
    it = generate(model, prompt, 12, temperature=0.0, compile_decode=True)
    assert int(next(it)) == eager[0]
    it.close()
    model.clear_cache()


@pytest.mark.parametrize("steps", [1, 3])
def test_multi_step_replays_match_eager_to_the_context_end(model: TransformerLM, steps: int) -> None:
    """Several decode steps per replay: token counts that are not a multiple of the steps, a
    generation that runs to the last context position, and sampling draws in eager's order."""
    plan = KernelPlan(decode_steps_per_replay=steps)
    try:
        _decoders.clear()
        prompt = torch.randint(0, 256, (2, 9))
        full = SMALL["context_length"] - 9 + 1  # every position the context allows
        for n in (1, 2, 8, full):
            torch.testing.assert_close(tokens(model, prompt, n, temperature=0.0, compile_decode=True, kernels=plan),
                                       tokens(model, prompt, n, temperature=0.0))
        kw = dict(temperature=0.8, top_k=40, seed=5)
        torch.testing.assert_close(tokens(model, prompt, 13, compile_decode=True, kernels=plan, **kw), tokens(model, prompt, 13, **kw))
        assert {key[-2] for key in _decoders[model]} == {steps}
    finally:
        _decoders.clear()
        model.clear_cache()


@pytest.mark.parametrize("steps", [1, 4])
def test_compiled_decode_slides_like_eager(model: TransformerLM, steps: int) -> None:
    """The CPU oracle's GPU twin (test_generate.py checks eager sliding against full forwards):
    several slides of a context of 64 (a re-prefill every 16 tokens), a prompt longer than the
    context, replays of several steps between re-prefills, and sampling draws in eager's order."""
    plan = KernelPlan(decode_steps_per_replay=steps)
    try:
        _decoders.clear()
        n = 3 * SMALL["context_length"] + 5
        for prompt in (torch.randint(0, 256, (2, 9)), torch.randint(0, 256, (2, 80))):
            torch.testing.assert_close(tokens(model, prompt, n, temperature=0.0, compile_decode=True, kernels=plan),
                                       tokens(model, prompt, n, temperature=0.0))
        kw = dict(temperature=0.8, top_k=40, seed=5)
        prompt = torch.randint(0, 256, (2, 9))
        torch.testing.assert_close(tokens(model, prompt, n, compile_decode=True, kernels=plan, **kw), tokens(model, prompt, n, **kw))
    finally:
        _decoders.clear()
        model.clear_cache()


@pytest.mark.parametrize("stop_ids", [(), (3,)])
def test_compiled_decode_refuses_non_finite_scores(model: TransformerLM, stop_ids: tuple) -> None:
    with torch.no_grad():
        model.blocks[1].ffn.w2.weight.fill_(float("nan"))
    try:
        with pytest.raises(NonFiniteLogitsError):
            tokens(model, torch.randint(0, 256, (2, 5)), 100, temperature=0.0, stop_ids=stop_ids, compile_decode=True)
    finally:
        _decoders.clear()
        model.clear_cache()


@pytest.mark.parametrize(
    "plan",
    [KernelPlan(decode_attention_kernel=False), KernelPlan(stacked_decode_weights=False), KernelPlan(decode_tuning=False)],
    ids=["no-decode-kernel", "no-stacked-weights", "no-tuning"],
)
@pytest.mark.parametrize("compile_decode", [False, True])
def test_each_decode_path_off_gives_the_same_tokens(model: TransformerLM, plan: KernelPlan, compile_decode: bool) -> None:
    """Every decode fast path is a twin of the plain code: switched off, greedy tokens stay the same."""
    prompt = torch.randint(0, 256, (2, 7))
    try:
        torch.testing.assert_close(tokens(model, prompt, 20, temperature=0.0, compile_decode=compile_decode, kernels=plan),
                                   tokens(model, prompt, 20, temperature=0.0))
    finally:
        _decoders.clear()
        model.clear_cache()
