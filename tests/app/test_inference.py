"""lmkit.app.inference: loading checkpoints with their tokenizer, and streaming text from them."""

from __future__ import annotations

import shutil

import pytest
import torch
from trained_model import make_other_tokenizer, make_tiny_run

from lmkit.errors import CheckpointError, ConfigError, TokenizerError
from lmkit.app.inference import Piece, _held_back, _pieces, generate_text, load_trained, stream
from lmkit.training.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("inference"))


@pytest.fixture(scope="module")
def trained(run):
    return load_trained(run.checkpoint, device="cpu")


def test_load_trained_finds_tokenizer_and_drops_heavy_state(run, trained) -> None:
    assert not trained.model.training and trained.runtime.dtype == torch.float32
    assert trained.tokenizer.hash == trained.state["tokenizer"]["hash"]
    assert trained.eot_id == trained.tokenizer.token_id("<|endoftext|>")
    assert "model" not in trained.state and "optimizer" not in trained.state and trained.state["has_optimizer"]
    assert trained.settings.model.rope_theta == trained.config.rope_theta == 500.0
    # A run directory means its latest.pt.
    assert load_trained(run.checkpoint.parent, device="cpu").path == run.checkpoint


def test_greedy_stream_matches_full_forward_at_every_position(trained) -> None:
    """Oracle: the cached decode behind ``stream`` picks the argmax of a plain full forward."""
    prompt = "The cat"
    pieces = list(stream(trained, prompt, max_new_tokens=20, temperature=0.0, stop_at_eot=False))
    new = [p.id for p in pieces if p.id >= 0]
    seq = torch.tensor([trained.tokenizer.encode(prompt) + new])  # (1, T)
    with torch.no_grad():
        logits = trained.model(seq)  # (1, T, V), no cache
    n = len(trained.tokenizer.encode(prompt))
    assert logits[0, n - 1 : -1].argmax(-1).tolist() == new
    assert "".join(p.text for p in pieces) == trained.tokenizer.decode(new)


def test_cached_logits_equal_full_forward(trained) -> None:
    model, ids = trained.model, torch.tensor([trained.tokenizer.encode("A bird sang in the tree; the cat")])  # (1, T)
    T = ids.shape[1]
    with torch.no_grad():
        full = model(ids)  # (1, T, V)
        model.setup_cache(1)
        try:
            cached = [model(ids[:, :5], torch.arange(5))]  # prefill 5 positions, then one at a time
            cached += [model(ids[:, t : t + 1], torch.tensor([t])) for t in range(5, T)]
        finally:
            model.clear_cache()
    torch.testing.assert_close(torch.cat(cached, dim=1), full, atol=1e-5, rtol=1e-5)


def test_seeded_sampling_is_reproducible(trained) -> None:
    kw = dict(max_new_tokens=15, temperature=1.2, top_k=50, top_p=0.95, stop_at_eot=False)
    a = generate_text(trained, "The", seed=3, **kw)
    assert a == generate_text(trained, "The", seed=3, **kw)
    assert any(generate_text(trained, "The", seed=s, **kw) != a for s in range(4, 8))


def test_stop_string_cuts_before_it(trained) -> None:
    full = generate_text(trained, "The", max_new_tokens=25, temperature=0.0, stop_at_eot=False)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = generate_text(trained, "The", max_new_tokens=25, temperature=0.0, stop_at_eot=False, stop=[stop])
    assert cut == full[: full.find(stop)]


def test_multibyte_character_split_over_tokens() -> None:
    """The 4 bytes of an emoji arriving as 4 tokens come out as one character, not 4 U+FFFD."""
    from lmkit.tokenizer import Tokenizer

    tok = Tokenizer({i: bytes([i]) for i in range(256)}, [])
    emoji = "\U0001f44b".encode()
    pieces = list(_pieces(tok, iter(torch.tensor([[b]]) for b in emoji + b"!"), set(), ()))
    assert [p.text for p in pieces] == ["", "", "", "\U0001f44b", "!"]


def test_held_back_suffix() -> None:
    assert _held_back("end.\n", ("\n\n",)) == 1
    assert _held_back("abc", ("xyz", "bcd")) == 2
    assert _held_back("abc", ()) == 0
    # Held-back text that never completes a stop is released at the end.
    from lmkit.tokenizer import Tokenizer

    tok = Tokenizer({i: bytes([i]) for i in range(256)}, [])
    pieces = list(_pieces(tok, iter(torch.tensor([[b]]) for b in b"ab"), set(), ("bz",)))
    assert pieces == [Piece(ord("a"), "a"), Piece(ord("b"), ""), Piece(-1, "b")]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(prompt=""), "prompt is empty"),
        (dict(prompt="The cat sat " * 20, window="stop"), "longer than the model's context_length"),
        (dict(window="roll"), "window"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_p=0.0), "top_p"),
        (dict(temperature=-0.1), "temperature"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(stop=[""]), "stop string"),
    ],
)
def test_bad_generation_arguments(trained, kwargs, message) -> None:
    args = dict(prompt="The", max_new_tokens=5) | kwargs
    with pytest.raises(ConfigError, match=message):
        stream(trained, args.pop("prompt"), **args)


def test_long_prompt_slides_by_default(trained) -> None:
    """The default window keeps a long prompt's last context_length tokens and goes on past the context."""
    long = "The cat sat " * 20
    ids = trained.tokenizer.encode(long)
    assert len(ids) > trained.config.context_length
    tail = trained.tokenizer.decode(ids[-trained.config.context_length :])
    kw = dict(max_new_tokens=70, temperature=0.0, stop_at_eot=False)
    pieces = list(stream(trained, long, **kw))
    assert len([p for p in pieces if p.id >= 0]) == 70  # more than the context of 32 allows at once
    assert "".join(p.text for p in pieces) == generate_text(trained, tail, **kw)


@pytest.mark.parametrize("stop_at_eot", [True, False])
def test_nan_weights_raise_before_any_text(run, stop_at_eot) -> None:
    from lmkit.generation import NonFiniteLogitsError

    nan = load_trained(run.checkpoint, device="cpu")
    with torch.no_grad():
        nan.model.norm.weight.fill_(float("nan"))
    pieces = stream(nan, "The", max_new_tokens=10, temperature=0.0, stop_at_eot=stop_at_eot)
    with pytest.raises(NonFiniteLogitsError, match="not finite"):
        next(pieces)


def test_tokenizer_hash_mismatch_is_refused(run, tmp_path) -> None:
    other = make_other_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match="does not match"):
        load_trained(run.checkpoint, device="cpu", tokenizer_dir=other)


def test_tokenizer_found_beside_a_moved_run(run, tmp_path) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(run.checkpoint.parent, moved)
    state = load_checkpoint(moved / "latest.pt")
    state["tokenizer"]["dir"] = str(tmp_path / "gone")
    state["settings"]["data"]["tokenizer_dir"] = None
    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "version", "lmkit_version")}, moved / "latest.pt")
    with pytest.raises(TokenizerError, match="--tokenizer DIR"):
        load_trained(moved, device="cpu")
    assert load_trained(moved, device="cpu", tokenizer="optional").tokenizer is None
    shutil.copytree(run.tokenizer_dir, moved / "tokenizer")
    assert load_trained(moved, device="cpu").tokenizer.hash == state["tokenizer"]["hash"]


def test_weights_that_do_not_fit_the_config(run, tmp_path) -> None:
    state = load_checkpoint(run.checkpoint)
    state["model_config"]["d_ff"] = 96
    save_checkpoint(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="do not match model_config"):
        load_trained(tmp_path / "bad.pt", device="cpu")


def test_cuda_without_cuda_is_a_config_error(run) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    with pytest.raises(ConfigError, match="no CUDA device"):
        load_trained(run.checkpoint, device="cuda")


@pytest.mark.gpu
def test_cuda_compiled_stream_matches_cpu_greedy(run, trained) -> None:
    gpu = load_trained(run.checkpoint, device="cuda", dtype="float32", compile=True)
    kw = dict(max_new_tokens=20, temperature=0.0, stop_at_eot=False)
    assert generate_text(gpu, "The cat", **kw) == generate_text(trained, "The cat", **kw)
    assert generate_text(gpu, "A bird", **kw) == generate_text(trained, "A bird", **kw)  # graph replayed
