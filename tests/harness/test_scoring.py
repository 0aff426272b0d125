"""``score_pairs`` and ``generate_until`` against a full forward pass, on a random tiny model (no lm-eval)."""

from __future__ import annotations

import pytest
import torch

from lmkit.errors import DataError
from lmkit.harness.scoring import model_input, score_pairs
from lmkit.harness.until import UntilRequest, cut_at_stop, generate_until, truncate_prompt
from lmkit.model import ModelConfig, TransformerLM

CONFIG = ModelConfig(vocab_size=64, context_length=16, d_model=32, num_layers=2, num_heads=4, d_ff=64)


@pytest.fixture(scope="module")
def model() -> TransformerLM:
    torch.manual_seed(0)
    m = TransformerLM(CONFIG)
    m.init_weights()
    return m.eval()


def _oracle(model: TransformerLM, ctx: list[int], cont: list[int], max_length: int) -> tuple[float, bool]:
    """One request alone, all positions' logits, as the harness's HF model computes it."""
    full = (ctx + cont)[-(max_length + 1):]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([full[:-1]])).double(), -1)[0]  # (L, V)
    tail = logp[-len(cont):]
    target = torch.tensor(cont)
    return float(tail.gather(1, target[:, None]).sum()), bool((tail.argmax(-1) == target).all())


PAIRS = [([1, 2, 3], [4]), ([1, 2, 3], [5]), ([7], [8, 9, 10]), (list(range(1, 15)), [3, 4]), ([5] * 20, [6, 7]),
         ([2], [2]), ([9, 9], [1])]


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_matches_a_full_forward_per_request(model, batch_size) -> None:
    got = score_pairs(model, PAIRS, max_length=16, batch_size=batch_size)
    for (ctx, cont), (lp, greedy) in zip(PAIRS, got):
        want_lp, want_greedy = _oracle(model, ctx, cont, 16)
        assert lp == pytest.approx(want_lp, abs=1e-4)
        assert greedy == want_greedy


def test_greedy_flag_true_for_the_models_own_argmax(model) -> None:
    ctx = [3, 1, 4, 1, 5]
    with torch.no_grad():
        best = int(model(torch.tensor([ctx]))[0, -1].argmax())
    worst = int(model(torch.tensor([ctx]))[0, -1].argmin())
    (lp_best, g_best), (lp_worst, g_worst) = score_pairs(model, [(ctx, [best]), (ctx, [worst])], max_length=16, batch_size=2)
    assert g_best and not g_worst and lp_best > lp_worst


def test_left_truncation_keeps_the_last_max_length_tokens(model) -> None:
    ctx, cont = list(range(1, 30)), [5, 6]
    assert model_input(ctx, cont, 16) == tuple((ctx + cont)[-17:-1])
    (lp, _), = score_pairs(model, [(ctx, cont)], max_length=16, batch_size=1)
    (short, _), = score_pairs(model, [(ctx[-15:], cont)], max_length=16, batch_size=1)
    assert lp == pytest.approx(short, abs=1e-5)  # the dropped context changes nothing
    assert lp == pytest.approx(_oracle(model, ctx, cont, 16)[0], abs=1e-4)


def test_bad_requests_are_refused(model) -> None:
    with pytest.raises(DataError, match="longer than the model's context of 16"):
        score_pairs(model, [([1], list(range(1, 18)))], max_length=16, batch_size=1)
    with pytest.raises(DataError, match="empty"):
        score_pairs(model, [([1], [])], max_length=16, batch_size=1)
    with pytest.raises(ValueError, match="max_length"):
        score_pairs(model, [([1], [2])], max_length=17, batch_size=1)


def test_progress_counts_every_request(model) -> None:
    seen: list[int] = []
    score_pairs(model, PAIRS, max_length=16, batch_size=2, progress=seen.append)
    assert seen[-1] == len(PAIRS) and seen == sorted(seen)


class _ByteTokenizer:
    """Ids are bytes: enough of a tokenizer for decoding in ``generate_until``."""

    vocab = {i: bytes([97 + i % 26]) for i in range(CONFIG.vocab_size)}


def _greedy(model: TransformerLM, ids: list[int], n: int) -> list[int]:
    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            out.append(int(model(torch.tensor([out[-CONFIG.context_length:]]))[0, -1].argmax()))
    return out[len(ids):]


def test_generate_until_is_greedy_decoding_cut_at_the_stop(model) -> None:
    prompts = [(1, 2, 3), (4, 5, 6), (7, 8)]
    want = ["".join(_ByteTokenizer.vocab[i].decode() for i in _greedy(model, list(p), 6)) for p in prompts]
    reqs = [UntilRequest(p, (), 6) for p in prompts]
    assert generate_until(model, _ByteTokenizer(), reqs, eot_id=None, batch_size=2) == want
    stop = want[0][2:4]
    cut = generate_until(model, _ByteTokenizer(), [UntilRequest(prompts[0], (stop,), 6)], eot_id=None, batch_size=1)
    assert cut == [want[0][: want[0].find(stop)]]


def test_end_of_text_ends_a_row(model) -> None:
    ids = _greedy(model, [1, 2, 3], 6)
    eot = ids[2]
    text = generate_until(model, _ByteTokenizer(), [UntilRequest((1, 2, 3), (), 6)], eot_id=eot, batch_size=1)[0]
    assert text == "".join(_ByteTokenizer.vocab[i].decode() for i in ids[: ids.index(eot)])


def test_helpers() -> None:
    assert truncate_prompt([1, 2, 3, 4], 5, 3) == (3, 4)
    assert truncate_prompt([1, 2, 3], 4, 10) == (3,)
    assert cut_at_stop("4\n\nQ:", ["\n\n", "Q"]) == ("4", True)
    assert cut_at_stop("abc", ["x"]) == ("abc", False)
