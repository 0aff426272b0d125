"""lmkit.app.evaluation: a deterministic full pass, checked against a naive per-window computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from trained_model import make_tiny_run

from lmkit.data.tokens import TokenFileMeta, open_tokens, write_tokens
from lmkit.errors import ConfigError, DataError
from lmkit.app.evaluation import evaluate, evaluate_checkpoint
from lmkit.app.inference import load_trained


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("evaluation"))


@pytest.fixture(scope="module")
def trained(run):
    return load_trained(run.checkpoint, device="cpu", tokenizer="none")


def test_matches_naive_per_window_loss_and_bits_per_byte(run, trained) -> None:
    data, meta = open_tokens(run.val_bin)
    T = trained.config.context_length
    windows = (meta.num_tokens - 1) // T
    nats = 0.0
    with torch.no_grad():
        for k in range(windows):
            w = torch.from_numpy(np.asarray(data[k * T : k * T + T + 1], dtype=np.int64))  # (T+1,)
            nats += F.cross_entropy(trained.model(w[None, :-1])[0], w[1:], reduction="sum").item()
    result = evaluate(trained, run.val_bin, batch_size=4)
    assert result.windows == windows and result.tokens == windows * T
    assert result.loss == pytest.approx(nats / (windows * T), rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(result.loss))
    covered = meta.source_bytes * windows * T / meta.num_tokens
    assert result.bits_per_byte == pytest.approx(nats / math.log(2) / covered, rel=1e-5)


def test_batch_size_does_not_change_the_numbers(run, trained) -> None:
    a, b = evaluate(trained, run.val_bin, batch_size=1), evaluate(trained, run.val_bin, batch_size=7)
    assert a.loss == pytest.approx(b.loss, rel=1e-6) and a.tokens == b.tokens


def test_max_tokens_rounds_down_to_whole_windows(run, trained) -> None:
    T = trained.config.context_length
    seen = []
    result = evaluate(trained, run.val_bin, batch_size=2, max_tokens=3 * T + 5, progress=lambda d, t: seen.append((d, t)))
    assert result.tokens == 3 * T and result.windows == 3
    assert seen == [(2 * T, 3 * T), (3 * T, 3 * T)]
    with pytest.raises(ConfigError, match="at least one window"):
        evaluate(trained, run.val_bin, max_tokens=T - 1)


def _bin(path, ids, **meta):
    write_tokens(path, np.asarray(ids, dtype=np.uint16), TokenFileMeta(dtype="uint16", num_tokens=0, **meta))
    return path


def test_ids_outside_the_vocabulary(trained, tmp_path) -> None:
    ids = np.arange(200) % 300
    ids[150] = 400  # the model has 320 ids
    with pytest.raises(DataError, match="token id 400"):
        evaluate(trained, _bin(tmp_path / "x.bin", ids))


def test_shorter_than_one_window(trained, tmp_path) -> None:
    with pytest.raises(DataError, match="shorter than one window"):
        evaluate(trained, _bin(tmp_path / "x.bin", range(20)))


def test_data_from_another_tokenizer(trained, tmp_path) -> None:
    with pytest.raises(DataError, match="re-encode"):
        evaluate(trained, _bin(tmp_path / "x.bin", range(100), tokenizer_hash="sha256:0000000000000000"))


def test_no_source_bytes_means_no_bits_per_byte(trained, tmp_path) -> None:
    assert evaluate(trained, _bin(tmp_path / "x.bin", range(100))).bits_per_byte is None


@pytest.mark.gpu
def test_cpu_and_cuda_agree_within_bf16_tolerance(run) -> None:
    cpu = evaluate_checkpoint(run.checkpoint, run.val_bin, device="cpu")
    gpu = evaluate_checkpoint(run.checkpoint, run.val_bin, device="cuda")  # bf16 autocast
    assert gpu.dtype == "bfloat16" and gpu.tokens == cpu.tokens
    assert gpu.loss == pytest.approx(cpu.loss, rel=2e-2)
    assert gpu.bits_per_byte == pytest.approx(cpu.bits_per_byte, rel=2e-2)


# --- the data formats train accepts, and files that are not token data --------------------------


def test_text_file_of_ids_gives_the_same_numbers_as_its_bin(run, trained, tmp_path) -> None:
    # Beside an import-ids .json, as in the report: the text must not be read with that metadata.
    ids, _ = open_tokens(run.val_bin)
    src = tmp_path / "val.txt"
    src.write_text("\n".join(" ".join(map(str, ids[i : i + 50].tolist())) for i in range(0, len(ids), 50)) + "\n")
    notices = []
    from_text = evaluate(trained, src, batch_size=4, notice=notices.append)
    want = evaluate(trained, run.val_bin, batch_size=4)
    assert from_text.loss == pytest.approx(want.loss, rel=1e-6) and from_text.tokens == want.tokens
    assert "converting once" in notices[0]
    assert evaluate(trained, src, batch_size=4).loss == pytest.approx(want.loss, rel=1e-6)  # reuses the .bin


def test_raw_text_says_to_encode_it_first(trained, tmp_path) -> None:
    src = tmp_path / "story.txt"
    src.write_text("The cat sat on the mat.\n")
    with pytest.raises(DataError, match=r"raw text, not token ids; encode it with `lmkit tokenize encode"):
        evaluate(trained, src)


def test_understated_vocab_size_cannot_bypass_the_id_check(trained, tmp_path) -> None:
    ids = np.arange(200) % 300
    ids[150] = 400  # the model has 320 ids; the metadata claims 300
    with pytest.raises(DataError, match="token id 400"):
        evaluate(trained, _bin(tmp_path / "x.bin", ids, vocab_size=300))


def test_data_from_a_larger_tokenizer_is_refused(trained, tmp_path) -> None:
    with pytest.raises(DataError, match=r"tokenizer of 1000 ids, but .* has 320"):
        evaluate(trained, _bin(tmp_path / "x.bin", range(100), vocab_size=1000, tokenizer_dir="/elsewhere"))


_HUGE_BATCH = """
import resource, sys
import numpy as np
from lmkit.data.tokens import TokenFileMeta, write_tokens
from lmkit.errors import ConfigError
from lmkit.app.inference import load_trained
from lmkit.app.evaluation import evaluate
trained = load_trained(sys.argv[1], device="cpu", tokenizer="none")
path = sys.argv[2]
write_tokens(path, (np.arange(400_000) % 300).astype(np.uint16), TokenFileMeta(dtype="uint16", num_tokens=0))
used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + (300 << 20), resource.RLIM_INFINITY))
try:
    evaluate(trained, path, batch_size=10**9)
except ConfigError as e:
    print("refused:", e)
"""


def test_a_huge_batch_size_is_refused_before_allocating(run, tmp_path) -> None:
    # 12,500 windows at once would need ~0.8 GB; the process may grow by 300 MB only.
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _HUGE_BATCH, str(run.checkpoint), str(tmp_path / "big.bin")],
                          check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refused: --batch-size 1000000000 needs about" in proc.stdout and "lower --batch-size" in proc.stdout


def test_a_sharded_dataset_evaluates_like_its_one_file(run, trained, tmp_path) -> None:
    from tests.data.dataset_fixtures import write_dataset

    data, meta = open_tokens(run.val_bin)
    manifest = write_dataset(tmp_path, "val", np.asarray(data), shard_tokens=37, vocab_size=meta.vocab_size,
                             tokenizer_hash=meta.tokenizer_hash, source_bytes=meta.source_bytes)
    one, many = evaluate(trained, run.val_bin, batch_size=4), evaluate(trained, manifest, batch_size=4)
    assert (many.loss, many.tokens, many.bits_per_byte) == (one.loss, one.tokens, one.bits_per_byte)
    with pytest.raises(ConfigError, match="evaluates one dataset, not a mixture"):
        evaluate(trained, f"a={manifest}:1,b={manifest}:1")
