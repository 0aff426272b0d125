"""Data paths, vocabulary checks and the vocab_size default, as train (and eval) use them."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import torch
from tests.conftest import TINY_MODEL

from lmkit.data.loader import BatchLoader, TokenDataset, data_vocab_size, resolve_token_file
from lmkit.data.tokens import TokenFileMeta, meta_path, open_tokens, write_tokens
from lmkit.errors import DataError
from lmkit.locking import lock_output
from lmkit.settings import resolve_settings


def _bin(path, ids, **meta):
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = np.asarray(ids)
    write_tokens(path, ids.astype(np.uint16), TokenFileMeta(dtype="uint16", num_tokens=0, **meta))
    return path


def _tok_bin(path, vocab=1024, top=1022, n=4000, tokenizer_hash="sha256:aaaa", seed=0):
    """Ids below ``top + 1`` (``top`` included) from a tokenizer of ``vocab`` ids."""
    ids = np.random.default_rng(seed).integers(0, top, n)
    ids[n // 2] = top
    return _bin(path, ids, vocab_size=vocab, tokenizer_hash=tokenizer_hash, tokenizer_dir="/tok")


# --- what a data path is -------------------------------------------------------------------


def test_text_file_of_ids_is_converted_once_and_reused(tmp_path):
    src = tmp_path / "ids.txt"
    src.write_text("1 2 3\n4 5\n")
    notices = []
    out = resolve_token_file(src, notices.append)
    assert out == tmp_path / "ids.bin" and open_tokens(out)[0].tolist() == [1, 2, 3, 4, 5]
    assert resolve_token_file(src, notices.append) == out and len(notices) == 1


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("corpus.txt", "Once upon a time 42 cats.\n", r"is raw text, not token ids; encode it with `lmkit tokenize encode"),
        ("blob.dat", b"\x00\x01\x02\xff" * 10, "is binary data but not a token file"),
        ("empty.txt", "", "is empty"),
        ("ids.bin", "1 2 3\n", r"holds text, not binary token ids"),
    ],
)
def test_what_a_file_is_when_it_is_not_token_data(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=match):
        resolve_token_file(path)


def test_metadata_passed_instead_of_its_bin_and_directories(tmp_path):
    path = _bin(tmp_path / "d.bin", range(50))
    with pytest.raises(DataError, match=r"is the metadata of a token file; pass the token file .*d\.bin"):
        resolve_token_file(meta_path(path))
    with pytest.raises(DataError, match="is a directory"):
        resolve_token_file(tmp_path)


def test_conversion_never_overwrites_a_foreign_json(tmp_path):
    src = tmp_path / "val.txt"
    src.write_text("1 2 3\n")
    (tmp_path / "val.json").write_text('{"mine": true}')
    with pytest.raises(DataError, match="converting would overwrite it"):
        resolve_token_file(src)
    assert (tmp_path / "val.json").read_text() == '{"mine": true}'


def test_conversion_waits_for_another_converter(tmp_path):
    # Two ranks of one job: the second waits for the first instead of failing or racing.
    src = tmp_path / "ids.txt"
    src.write_text("7 8 9\n")
    lock = lock_output(tmp_path / "ids.bin").acquire()
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("out", resolve_token_file(src, lambda m: result.setdefault("notice", m))))
    t.start()
    time.sleep(0.5)
    assert "out" not in result and "waiting" in result["notice"]
    lock.release()
    t.join(10)
    assert open_tokens(result["out"])[0].tolist() == [7, 8, 9]


# --- ids beyond the model's vocabulary -------------------------------------------------------


def test_lying_vocab_size_is_caught_before_the_embedding(tmp_path):
    ids = np.arange(4000) % 60  # ids up to 59 ...
    path = _bin(tmp_path / "d.bin", ids, vocab_size=16)  # ... but the metadata claims 16
    ds = TokenDataset(path, context_length=16, vocab_size=32)
    loader = BatchLoader(ds, batch_size=4, grad_accum_steps=1, device="cpu", seed=0, prefetch=False)
    with pytest.raises(DataError, match=r"d\.bin: holds token id 5\d but the model's vocab_size is 32"):
        loader.step_batches(0)


def test_lying_vocab_size_stops_training_with_a_data_error(tmp_path, tiny_overrides):
    from lmkit.api import train

    path = _bin(tmp_path / "lie.bin", np.arange(20000) % 200, vocab_size=64)  # ids up to 199, model has 64
    settings = resolve_settings(overrides=dict(tiny_overrides, train_data_path=str(path), val_data_path=""))
    with pytest.raises(DataError, match="holds token id"):
        train(settings)


def test_hint_is_the_tokenizers_vocabulary_not_the_largest_id(tmp_path):
    path = _tok_bin(tmp_path / "d.bin")  # tokenizer of 1024 ids, ids up to 1022
    for vocab in (512, 1023):
        with pytest.raises(DataError, match=r"tokenizer of 1024 ids .* set --vocab-size to at least 1024"):
            TokenDataset(path, context_length=16, vocab_size=vocab)
    TokenDataset(path, context_length=16, vocab_size=1024)


def test_hint_without_a_tokenizer_is_the_largest_id(tmp_path):
    path = _bin(tmp_path / "d.bin", np.arange(1000) % 700)
    with pytest.raises(DataError, match="set --vocab-size to at least 700"):
        TokenDataset(path, context_length=16, vocab_size=512)


# --- vocab_size from the data's tokenizer ----------------------------------------------------


def _settings(tmp_path, train, val=None, **extra):
    model = {k: v for k, v in TINY_MODEL.items() if k != "vocab_size"}
    return resolve_settings(overrides=dict(model, train_data_path=str(train), val_data_path=str(val) if val else "",
                                           checkpoint_dir=str(tmp_path / "run"), **extra))


def test_unset_vocab_size_defaults_to_the_tokenizers(tmp_path):
    s = _settings(tmp_path, _tok_bin(tmp_path / "t.bin"), _tok_bin(tmp_path / "v.bin", seed=1))
    assert "vocab_size" not in s.model.model_fields_set
    notices = []
    out = data_vocab_size(s, None, notices.append)
    assert out.model.vocab_size == 1024 and "from the tokenizer" in notices[0]


def test_given_vocab_size_is_kept_and_a_preset_counts_as_given(tmp_path):
    train = _tok_bin(tmp_path / "t.bin")
    assert data_vocab_size(_settings(tmp_path, train, vocab_size=2048), None).model.vocab_size == 2048
    preset = resolve_settings(base=_settings(tmp_path, train, vocab_size=4096))
    assert data_vocab_size(resolve_settings(base=preset), None).model.vocab_size == 4096


def test_resume_keeps_the_checkpoints_vocab_size_when_it_fits(tmp_path):
    s = _settings(tmp_path, _tok_bin(tmp_path / "t.bin"))
    assert data_vocab_size(s, {"settings": {"model": {"vocab_size": 50257}}}).model.vocab_size == 50257
    assert data_vocab_size(s, {"settings": {"model": {"vocab_size": 100}}}).model.vocab_size == 1024


def test_train_and_val_from_different_tokenizers_are_refused(tmp_path):
    s = _settings(tmp_path, _tok_bin(tmp_path / "t.bin"), _tok_bin(tmp_path / "v.bin", tokenizer_hash="sha256:bbbb"))
    with pytest.raises(DataError, match="encoded with different tokenizers"):
        data_vocab_size(s, None)


def test_trained_model_can_use_its_tokenizer(tmp_path):
    # The whole path: train with vocab_size unset on data from a 300-id tokenizer; the model
    # gets 300 ids, so `generate` accepts the recorded tokenizer.
    from lmkit.api import train

    train_bin = _tok_bin(tmp_path / "t.bin", vocab=300, top=299, n=3000)
    s = _settings(tmp_path, train_bin, max_iters=2, batch_size=4, eval_interval=2, eval_iters=1, log_interval=1,
                  checkpoint_interval=2, wandb=False, device="cpu", compile=False)
    result = train(s)
    state = torch.load(result.last_checkpoint, map_location="cpu", weights_only=False)
    assert state["model_config"]["vocab_size"] == 300 and state["settings"]["model"]["vocab_size"] == 300
    assert json.loads(json.dumps(state["tokenizer"]))["vocab_size"] == 300


def test_too_small_vocab_size_is_refused_before_step_1(tmp_path):
    from lmkit.api import train

    s = _settings(tmp_path, _tok_bin(tmp_path / "t.bin"), vocab_size=1023, max_iters=2, wandb=False, device="cpu")
    with pytest.raises(DataError, match="at least 1024"):
        train(s)
    assert not (tmp_path / "run" / "latest.pt").exists()
