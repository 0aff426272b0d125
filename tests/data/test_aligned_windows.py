"""`data.align_documents`: training windows that start at document starts (issue #23)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.conftest import TINY_MODEL
from tests.data.dataset_fixtures import write_dataset

from lmkit.api import resolve_settings, train
from lmkit.data.loader import BatchLoader, TokenDataset
from lmkit.data.tokens import TokenFileMeta, write_tokens
from lmkit.observe.base import MultiSink
from lmkit.settings_mixture import parse_data_path

T = 16
N = 5000
# Irregular documents: some shorter than a window, one spanning the shard boundary at 2048.
DOCS = [0, 3, 40, 41, 300, 1000, 2000, 2600, 2601, 4000, 4980]


@pytest.fixture
def docs_data(tmp_path):
    """ids 0..N-1 (each id its own position) in 3 shards, with DOCS as the document index."""
    return write_dataset(tmp_path / "d", "docs", np.arange(N), 2048, doc_starts=DOCS, vocab_size=N)


def _starts(loader: BatchLoader, step: int) -> list[int]:
    return [int(v) for x, _ in loader.step_batches(step) for v in x[:, 0]]  # an id is its position


def test_every_window_starts_at_a_document_start(docs_data):
    data = TokenDataset(docs_data, T, N)
    loader = BatchLoader(data, 64, 2, "cpu", seed=3, align_documents=True, prefetch=False)
    seen = set()
    for step in range(20):
        for x, y in loader.step_batches(step):
            assert x.shape == (32, T) and torch.equal(x[:, 1:], y[:, :-1])
            seen |= {int(v) for v in x[:, 0]}
    fits = {d for d in DOCS if d <= N - T - 1}  # 4980 is too close to the end for a window
    assert seen == fits  # every document that fits is drawn, and only those
    # Unaligned, the same loader starts anywhere.
    free = BatchLoader(data, 64, 2, "cpu", seed=3, prefetch=False)
    assert not set(_starts(free, 0)) <= set(DOCS)


def test_aligned_windows_are_the_same_across_resume_and_ranks(docs_data):
    data = TokenDataset(docs_data, T, N)
    one = BatchLoader(data, 16, 2, "cpu", seed=5, align_documents=True)
    again = BatchLoader(TokenDataset(docs_data, T, N), 16, 2, "cpu", seed=5, align_documents=True)  # a resumed run: a new loader
    ranks = [BatchLoader(data, 16, 2, "cpu", seed=5, rank=r, world_size=2, align_documents=True, prefetch=False) for r in range(2)]
    for step in (7, 0, 7, 100):
        whole = one.step_batches(step)
        assert all(torch.equal(a[0], b[0]) for a, b in zip(whole, again.step_batches(step)))
        per_rank = [rk.step_batches(step) for rk in ranks]
        for micro, (x, _) in enumerate(whole):
            assert torch.equal(x, torch.cat([per_rank[r][micro][0] for r in range(2)]))
    other_seed = BatchLoader(data, 16, 2, "cpu", seed=6, align_documents=True, prefetch=False)
    assert _starts(other_seed, 7) != _starts(one, 7)
    one.close(), again.close()


def _no_index(path):
    """ids 0..N-1 as a token file from before document indexes (a .bin and its .json only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_tokens(path, np.arange(N).astype(np.uint16), TokenFileMeta(dtype="uint16", num_tokens=0, vocab_size=N))
    return path


def test_data_without_an_index_falls_back_to_random_windows_with_a_notice(tmp_path):
    notices = []
    data = TokenDataset(_no_index(tmp_path / "old.bin"), T, N)
    loader = BatchLoader(data, 64, 1, "cpu", seed=3, align_documents=True, prefetch=False, notice=notices.append)
    assert len(notices) == 1 and "no document index" in notices[0] and "start anywhere" in notices[0]
    assert _starts(loader, 0) == _starts(BatchLoader(data, 64, 1, "cpu", seed=3, prefetch=False), 0)


def test_a_mixture_aligns_the_sources_that_have_an_index(docs_data, tmp_path):
    plain = _no_index(tmp_path / "plain.bin")
    notices = []
    data = TokenDataset(parse_data_path(f"a={docs_data}:0.5,b={plain}:0.5"), T, N)
    loader = BatchLoader(data, 256, 1, "cpu", seed=1, align_documents=True, prefetch=False, notice=notices.append)
    sources, starts = data.plan(256, 1, 0, aligned=True)
    assert set(starts[sources == 0].tolist()) <= set(DOCS)
    assert not set(starts[sources == 1].tolist()) <= set(DOCS)  # random: no index
    assert [n for n in notices if "plain" in n]
    assert loader.step_batches(0)[0][0].shape == (256, T)


def test_training_with_aligned_windows_resumes_exactly(tmp_path, tiny_overrides):
    ids = (np.arange(20000) * 7 % 61).astype(np.uint16)
    path = write_dataset(tmp_path / "t", "train", ids, 8192, doc_starts=np.arange(0, 20000, 37), vocab_size=64)
    base = dict(tiny_overrides, train_data_path=str(path), align_documents=True, max_iters=12, lr_decay_iters=12,
                log_interval=1, checkpoint_interval=6)
    losses = []
    for name, stops in (("full", [12]), ("split", [6, 12])):
        rec = []
        for stop in stops:
            res = train(resolve_settings(overrides=dict(base, checkpoint_dir=str(tmp_path / name), max_iters=stop), environ={}), MultiSink([]))
            rec.append(res.train_loss)
        losses.append((rec[-1], res.val_loss))
    assert losses[0] == losses[1]
    saved = resolve_settings(overrides=base, environ={})
    assert saved.data.align_documents is True
