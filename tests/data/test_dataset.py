"""Datasets as training reads them (lmkit/data/dataset.py): shards, lazy maps, forms, mixtures."""

from __future__ import annotations

import math
import os
import shutil

import numpy as np
import pytest
import torch

from lmkit.data.dataset import open_data, open_dataset
from lmkit.data.loader import (
    BatchLoader,
    TokenDataset,
    data_vocab_size,
    eval_batches,
    get_batch,
    mixture_plan,
    window_starts,
)
from lmkit.data.tokens import TokenFileMeta, open_tokens, write_tokens
from lmkit.errors import DataError
from lmkit.settings import resolve_settings
from lmkit.settings_mixture import parse_data_path
from tests.data.dataset_fixtures import write_dataset

IDS = (np.arange(20000) * 7 % 61).astype(np.uint16)


def _one_file(tmp_path, ids=IDS):
    path = tmp_path / "one" / "train.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_tokens(path, ids, TokenFileMeta(dtype="uint16", num_tokens=0, vocab_size=64, tokenizer_hash="sha256:aaaa", tokenizer_dir="/tok"))
    return path


def _batches(path, steps=range(6), **kw):
    loader = BatchLoader(TokenDataset(path, 16, 64), batch_size=8, grad_accum_steps=kw.get("accum", 1), device="cpu", seed=3,
                         rank=kw.get("rank", 0), world_size=kw.get("world", 1), prefetch=False)
    return [loader.step_batches(s) for s in steps]


# --- shards read as one stream ----------------------------------------------------------------


def test_one_file_and_150_shards_give_identical_batches(tmp_path):
    one = _one_file(tmp_path)
    sharded = write_dataset(tmp_path / "sharded", "train", IDS, shard_tokens=133)
    assert len(open_dataset(sharded).shards) == 151
    a, b = _batches(one), _batches(sharded)
    for step_a, step_b in zip(a, b):
        for (xa, ya), (xb, yb) in zip(step_a, step_b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # ... and both are exactly what the loader always drew from one file (bitwise resume of old runs).
    data, _ = open_tokens(one)
    for step, got in zip(range(6), a):
        x, y = get_batch(data, 8, 16, "cpu", starts=window_starts(len(data), 16, 8, 3, step))
        assert torch.equal(got[0][0], x) and torch.equal(got[0][1], y)


def test_windows_spanning_shard_boundaries(tmp_path):
    ids = np.arange(3000) % 60
    data = open_dataset(write_dataset(tmp_path, "tiny", ids, shard_tokens=5))  # windows span up to 5 shards
    rng = np.random.default_rng(0)
    for start in [0, 4, 5, 2983, *rng.integers(0, 3000 - 17, 200)]:
        assert data.window(int(start), 17).tolist() == ids[start : start + 17].tolist()
    assert data[10:3000].tolist() == ids[10:].tolist()
    with pytest.raises(IndexError):
        data.window(2990, 17)


def _shard_fds(directory) -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith(str(directory))
        except OSError:
            pass
    return n


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors through /proc")
def test_shards_are_mapped_lazily_and_at_most_64_at_once(tmp_path):
    path = write_dataset(tmp_path / "d", "big", np.arange(20000) % 60, shard_tokens=100)  # 200 shards
    ds = TokenDataset(path, 16, 64)
    assert len(ds.data.shards) == 200 and ds.data.maps_opened == 0 and _shard_fds(tmp_path / "d") == 0
    loader = BatchLoader(ds, batch_size=32, grad_accum_steps=1, device="cpu", seed=0, prefetch=False)
    for step in range(40):
        loader.step_batches(step)
    assert ds.data.maps_opened > 64  # most shards were touched ...
    assert ds.data.open_maps <= 64 and _shard_fds(tmp_path / "d") <= 64  # ... but never more than 64 held


def test_document_index_is_global(tmp_path):
    starts = [0, 7, 130, 133, 250, 399]
    data = open_dataset(write_dataset(tmp_path, "d", np.arange(400) % 60, shard_tokens=133, doc_starts=starts))
    assert data.documents().tolist() == starts and data.num_documents == 6
    # The same documents as token files read through a glob (no manifest): counted from each .json.
    glob_form = open_dataset(str(tmp_path / "d-*.bin"))
    assert glob_form.documents().tolist() == starts and glob_form.num_documents == 6


# --- what a data path may be ------------------------------------------------------------------


def test_forms_of_a_data_path_open_the_same_stream(tmp_path):
    manifest = write_dataset(tmp_path / "m", "web", IDS[:5000], shard_tokens=1000)
    single = write_dataset(tmp_path / "s", "web", IDS[:5000], shard_tokens=10**6)
    assert single.name == "web.json" and (tmp_path / "s" / "web.bin").is_file()
    forms = [manifest, tmp_path / "m", single, single.with_suffix(".bin"), tmp_path / "s", str(tmp_path / "m" / "web-*.bin")]
    for form in forms:
        data = open_dataset(form)
        assert data.num_tokens == 5000 and data[0:5000].tolist() == IDS[:5000].tolist(), form
        assert data.tokenizer_hash == "sha256:aaaa" and data.source_bytes == 15000
    assert open_dataset(manifest).name == "web"


def test_unusable_paths_are_named(tmp_path):
    with pytest.raises(DataError, match=r"matches no \.bin token files"):
        open_dataset(str(tmp_path / "nothing" / "*.bin"))
    write_dataset(tmp_path / "two", "web-train", IDS[:3000], 1000)
    write_dataset(tmp_path / "two", "web-val", IDS[:3000], 1000)
    with pytest.raises(DataError, match=r"holds 2 dataset manifests \(web-train\.json, web-val\.json\); pass one"):
        open_dataset(tmp_path / "two")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no dataset manifest and no .bin"):
        open_dataset(tmp_path / "empty")
    with pytest.raises(DataError, match="token file not found"):
        open_dataset(tmp_path / "missing.bin")


def test_missing_or_altered_shard_is_named(tmp_path):
    path = write_dataset(tmp_path, "web", IDS, shard_tokens=1000)
    (tmp_path / "web-00007.bin").unlink()
    with pytest.raises(DataError, match=r"web\.json: shard web-00007\.bin is missing; re-run the same `lmkit tokenize encode`"):
        open_dataset(path)
    path = write_dataset(tmp_path / "b", "web", IDS, shard_tokens=1000)
    with open(tmp_path / "b" / "web-00003.bin", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(DataError, match=r"web\.json: shard web-00003\.bin is 1000 bytes, the manifest lists 2000 \(altered or truncated\)"):
        open_dataset(path)
    # Same size, other content: found by verify(), which hashes every shard.
    path = write_dataset(tmp_path / "c", "web", IDS, shard_tokens=1000)
    with open(tmp_path / "c" / "web-00011.bin", "r+b") as f:
        f.write(b"\x01\x00")
    data = open_dataset(path)
    with pytest.raises(DataError, match=r"web-00011\.bin: content differs"):
        data.verify()


def test_different_tokenizers_are_refused_naming_both(tmp_path):
    a = write_dataset(tmp_path / "a", "web", IDS, 5000, tokenizer_hash="sha256:aaaa")
    b = write_dataset(tmp_path / "b", "code", IDS, 5000, tokenizer_hash="sha256:bbbb")
    with pytest.raises(DataError, match=r"a/web\.json and .*b/code\.json were encoded with different tokenizers \(sha256:aaaa.*sha256:bbbb"):
        open_data(parse_data_path(f"web={a}:1,code={b}:1"))
    # Training on one and validating on the other: refused too, before any model is built.
    s = resolve_settings(overrides={"train_data_path": str(a), "val_data_path": str(b)}, environ={})
    with pytest.raises(DataError, match="different tokenizers"):
        data_vocab_size(s, None)
    # Token files of one directory or glob from two tokenizers.
    shutil.copy(tmp_path / "b" / "code-00000.bin", tmp_path / "a" / "zzz.bin")
    shutil.copy(tmp_path / "b" / "code-00000.json", tmp_path / "a" / "zzz.json")
    with pytest.raises(DataError, match=r"web-00000\.bin and .*zzz\.bin .* different tokenizers"):
        open_dataset(str(tmp_path / "a" / "*.bin"))


def test_a_dataset_larger_than_the_model_vocab_is_refused(tmp_path):
    path = write_dataset(tmp_path, "web", IDS, 5000, vocab_size=1024)
    with pytest.raises(DataError, match=r"web\.json: encoded with a tokenizer of 1024 ids .* at least 1024"):
        TokenDataset(path, 16, 512)


# --- mixtures ---------------------------------------------------------------------------------


def _three(tmp_path):
    # Source k holds ids 20k .. 20k+19 only, so a window shows which source it came from.
    paths = [write_dataset(tmp_path / n, n, 20 * k + np.arange(3000 + 1000 * k) % 20, 700) for k, n in enumerate(("a", "b", "c"))]
    return parse_data_path(f"a={paths[0]}:5,b={paths[1]}:3,c={paths[2]}:2")


def test_mixture_samples_in_proportion(tmp_path):
    ds = TokenDataset(_three(tmp_path), 16, 64)
    loader = BatchLoader(ds, batch_size=100, grad_accum_steps=1, device="cpu", seed=7, prefetch=False)
    n_windows = 0
    for step in range(200):  # 20,000 windows
        (x, _), = loader.step_batches(step)
        assert torch.all(x // 20 == x[:, :1] // 20)  # every window lies within one source
        n_windows += x.shape[0]
    T = 16
    for name, p in zip("abc", (0.5, 0.3, 0.2)):
        got = loader.tokens_by_source[name] / T
        sigma = math.sqrt(n_windows * p * (1 - p))
        assert abs(got - n_windows * p) < 3 * sigma, (name, got, n_windows * p, sigma)  # 3 sigma: ~0.3% false alarms
    assert sum(loader.tokens_by_source.values()) == 200 * 100 * T


def test_mixture_windows_are_a_pure_function_of_seed_and_step_and_ranks_split_them(tmp_path):
    ds = TokenDataset(_three(tmp_path), 16, 64)
    lengths = [len(d) for d in ds.mixture.sources]
    a = mixture_plan(lengths, ds.mixture.weights, 16, 64, 1, 5)
    b = mixture_plan(lengths, ds.mixture.weights, 16, 64, 1, 5)
    c = mixture_plan(lengths, ds.mixture.weights, 16, 64, 1, 6)
    assert all(np.array_equal(u, v) for u, v in zip(a, b)) and not np.array_equal(a[1], c[1])
    whole = _batches_of(ds, rank=0, world=1)
    halves = [_batches_of(ds, rank=r, world=2) for r in (0, 1)]
    assert torch.equal(whole, torch.cat(halves, dim=0))


def _batches_of(ds, rank, world):
    loader = BatchLoader(ds, batch_size=8, grad_accum_steps=1, device="cpu", seed=2, rank=rank, world_size=world, prefetch=False)
    return loader.step_batches(3)[0][0]


def test_a_mixture_of_one_reads_as_that_dataset(tmp_path):
    one = _one_file(tmp_path)
    a, b = _batches(one), _batches(parse_data_path(f"web={one}:1"))
    assert all(torch.equal(u[0][0], v[0][0]) for u, v in zip(a, b))


def test_validation_batches_over_a_mixture_are_fixed(tmp_path):
    ds = TokenDataset(_three(tmp_path), 16, 64)
    first = [x for x, _ in eval_batches(ds, 8, 3, "cpu", seed=1)]
    again = [x for x, _ in eval_batches(ds, 8, 3, "cpu", seed=1)]
    assert all(torch.equal(u, v) for u, v in zip(first, again))
    assert len({int(v) for x in first for v in (x[:, 0] // 20)}) > 1  # more than one source


def test_loader_state_keeps_tokens_by_source(tmp_path):
    ds = TokenDataset(_three(tmp_path), 16, 64)
    loader = BatchLoader(ds, batch_size=8, grad_accum_steps=1, device="cpu", seed=2)
    for step in range(3):
        loader.step_batches(step)
    state = loader.state_dict()
    loader.close()
    assert sum(state["tokens_by_source"].values()) == 3 * 8 * 16
    again = BatchLoader(ds, batch_size=8, grad_accum_steps=1, device="cpu", seed=2, prefetch=False)
    again.load_state_dict(state)
    assert again.tokens_by_source == state["tokens_by_source"]
