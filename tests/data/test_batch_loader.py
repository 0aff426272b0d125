"""lmkit.data.loader, directly: windows are a pure function of (seed, step), split exactly by rank."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lmkit.data.loader import BatchLoader, TokenDataset, eval_batches, window_starts
from lmkit.data.tokens import TokenFileMeta, write_tokens
from lmkit.errors import DataError

T, V = 8, 97


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> TokenDataset:
    path = tmp_path_factory.mktemp("loader") / "ids.bin"
    # Token k is k % V: a window's content names its start, so shifts and offsets are checkable.
    write_tokens(path, (np.arange(5_000) % V).astype(np.uint16), TokenFileMeta(dtype="uint16", num_tokens=0, vocab_size=V))
    return TokenDataset(path, T, V)


def _global(loader: BatchLoader, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return loader.step_batches(step)


def test_window_starts_depend_only_on_seed_and_step() -> None:
    a = window_starts(10_000, T, 64, seed=3, step=7)
    assert np.array_equal(a, window_starts(10_000, T, 64, seed=3, step=7))
    assert not np.array_equal(a, window_starts(10_000, T, 64, seed=3, step=8))
    assert not np.array_equal(a, window_starts(10_000, T, 64, seed=4, step=7))
    assert a.dtype == np.int64 and a.min() >= 0 and a.max() <= 10_000 - T - 1


def test_targets_are_inputs_shifted_by_one(dataset) -> None:
    (x, y), = BatchLoader(dataset, 4, 1, "cpu", seed=0, prefetch=False).step_batches(0)
    assert x.shape == y.shape == (4, T) and x.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal((x[:, 1:] - x[:, :-1]) % V, torch.ones(4, T - 1, dtype=torch.int64))  # contiguous windows


def test_batches_are_a_pure_function_of_seed_and_step(dataset) -> None:
    # Prefetching, asking out of order, or a fresh loader (a resumed run): the same batches.
    first = BatchLoader(dataset, 8, 2, "cpu", seed=5, prefetch=True)
    try:
        ahead = [first.step_batches(s) for s in (0, 1, 2, 7)]
    finally:
        first.close()
    fresh = BatchLoader(dataset, 8, 2, "cpu", seed=5, prefetch=False)
    for step, batches in zip((7, 2, 0, 1), (ahead[3], ahead[2], ahead[0], ahead[1])):
        again = fresh.step_batches(step)
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))
    other = BatchLoader(dataset, 8, 2, "cpu", seed=6, prefetch=False).step_batches(0)
    assert not torch.equal(other[0][0], ahead[0][0][0])


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_split_the_single_process_batch_exactly(dataset, world_size) -> None:
    accum = 2
    single = BatchLoader(dataset, 16, accum, "cpu", seed=1, prefetch=False).step_batches(3)
    per_rank = [BatchLoader(dataset, 16, accum, "cpu", seed=1, rank=r, world_size=world_size, prefetch=False).step_batches(3)
                for r in range(world_size)]
    for m in range(accum):
        # Micro-step m of one process == the ranks' micro-step m, concatenated in rank order.
        assert torch.equal(single[m][0], torch.cat([rank[m][0] for rank in per_rank]))
        assert torch.equal(single[m][1], torch.cat([rank[m][1] for rank in per_rank]))


def test_batch_that_does_not_split_is_refused(dataset) -> None:
    with pytest.raises(DataError, match="batch_size 10 is not divisible by grad_accum_steps x world size"):
        BatchLoader(dataset, 10, 2, "cpu", seed=0, world_size=2, prefetch=False)


def test_state_dict_restores_the_token_counts(dataset) -> None:
    loader = BatchLoader(dataset, 4, 1, "cpu", seed=0, prefetch=False)
    loader.step_batches(0)
    loader.step_batches(1)
    state = loader.state_dict()
    assert sum(state["tokens_by_source"].values()) == 2 * 4 * T
    resumed = BatchLoader(dataset, 4, 1, "cpu", seed=0, prefetch=False)
    resumed.load_state_dict(state)
    assert resumed.tokens_by_source == loader.tokens_by_source


def test_eval_batches_repeat_and_differ_from_training(dataset) -> None:
    one = [x for x, _ in eval_batches(dataset, 4, 3, "cpu", seed=0)]
    two = [x for x, _ in eval_batches(dataset, 4, 3, "cpu", seed=0)]
    assert len(one) == 3 and all(torch.equal(a, b) for a, b in zip(one, two))
    train = BatchLoader(dataset, 4, 1, "cpu", seed=0, prefetch=False).step_batches(0)[0][0]
    assert not torch.equal(one[0], train)
    halves = [torch.cat([x for x, _ in eval_batches(dataset, 4, 1, "cpu", 0, rank=r, world_size=2)]) for r in range(2)]
    assert torch.equal(torch.cat(halves), one[0])
