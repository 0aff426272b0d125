"""Deterministic evaluation of a trained model over a whole token file.

Notation used in shape comments:
    B  windows per batch
    T  context_length
    V  vocab_size

Unlike the trainer's validation (a fixed sample of random windows, cheap and comparable over a
run), this is a full pass: the file is cut into consecutive non-overlapping windows of T inputs,
window k predicting tokens ``k*T + 1 .. (k+1)*T``, so every token but the first is predicted
exactly once, each from the context since its window began. A tail shorter than a window is
left out (at most T - 1 tokens). The same file and checkpoint always give the same numbers.

Bits per byte divides the total surprise by the UTF-8 bytes of text the evaluated tokens cover,
so it compares models with different tokenizers::

    bpb = total_nats / ln(2) / (source_bytes * tokens_evaluated / num_tokens)
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lmkit.data.dataset import TokenData, open_dataset
from lmkit.data.loader import max_token_id
from lmkit.data.tokens import tokenizer_vocab
from lmkit.errors import ConfigError, DataError
from lmkit.app.inference import Trained, load_trained
from lmkit.settings_mixture import is_mixture_spelling

# Rows of logits materialised at once: bounds memory at 50k vocabularies ((rows, V) fp32).
_CE_ROWS = 4096


@dataclass
class EvalResult:
    """What ``evaluate`` measured."""

    loss: float  # mean cross-entropy, nats per token
    perplexity: float  # exp(loss)
    bits_per_byte: float | None  # None when the data records no source byte count
    tokens: int  # tokens evaluated (predicted)
    windows: int  # windows of context_length tokens
    total_nats: float  # summed cross-entropy
    source_bytes: float | None  # source bytes covered by the evaluated tokens
    context_length: int
    data: str
    checkpoint: str
    device: str
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (what ``lmkit eval --json`` prints)."""
        return asdict(self)


def check_token_ids(data: np.ndarray | TokenData, vocab_size: int, path: Path, stop: int | None = None) -> None:
    """Raise ``DataError`` if any id in ``data[:stop]`` is outside ``0..vocab_size-1``.

    Every id is read (in slices), whatever the metadata says: a ``.json`` understating the ids
    would otherwise send them into the embedding. It is one pass of reads next to the model's.
    """
    top = max_token_id(data, stop) if len(data) and stop != 0 else 0
    if top >= vocab_size:
        raise DataError(
            f"{path}: holds token id {top} but the model's vocabulary has {vocab_size} ids; "
            "encode the data with the model's tokenizer"
        )


def batch_bytes(config: Any, windows: int) -> int:
    """A generous estimate of the peak memory of one forward pass over ``windows`` windows.

    Ids and targets (int64), a block's activations (q, k, v, attention output, residual, the
    feed-forward's hidden pair), the (B, H, T, T) scores of attention where it is not fused
    (CPU), and the bounded (rows, V) logits slab.
    """
    T, D, H, F_, V = config.context_length, config.d_model, config.num_heads, config.d_ff, config.vocab_size
    per_window = T * (16 + 4 * (6 * D + 3 * F_)) + 4 * H * T * T
    return windows * per_window + _CE_ROWS * V * 8


def available_bytes(device: torch.device) -> int | None:
    """Memory this process can still allocate on ``device`` (None when it cannot be told)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    avail = None
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/statm") as f:
                used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            avail = min(avail if avail is not None else soft, max(soft - used, 0))
    except (ImportError, OSError, ValueError):
        pass
    return avail


def evaluate(
    trained: Trained,
    data_path: Path | str,
    batch_size: int = 8,
    max_tokens: int | None = None,
    *,
    autocast_dtype: torch.dtype | None = None,
    progress: Callable[[int, int], None] | None = None,
    notice: Callable[[str], None] = lambda m: None,
) -> EvalResult:
    """Loss, perplexity and bits per byte of a model over a token file, in one full pass.

    Args:
        trained: from ``lmkit.app.inference.load_trained``; with ``weights="float32"`` the
            forward runs under ``trained.runtime.autocast()``, as in training.
        data_path: one dataset, in any form ``train`` accepts (a manifest, a ``.bin`` with its
            ``.json``, a directory or glob of them, a text file of token ids); not a mixture.
        batch_size: windows per forward pass.
        max_tokens: evaluate at most this many tokens (rounded down to whole windows).
        autocast_dtype: run the forward under autocast in this dtype instead (None: as
            ``trained.runtime`` says).
        progress: called as ``progress(tokens_done, tokens_total)`` after each batch.
        notice: receives one-line notices (a text file being converted).

    Returns:
        ``EvalResult``.

    Raises:
        DataError: the file is unreadable, shorter than one window, holds ids outside the
            vocabulary, or was encoded with a different tokenizer than the checkpoint's.
        ConfigError: batch_size < 1, a batch too large for the memory available, or
            max_tokens below one window.
    """
    data_path = Path(data_path)
    T, V = trained.config.context_length, trained.config.vocab_size
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if max_tokens is not None and max_tokens < T:
        raise ConfigError(f"max_tokens ({max_tokens}) must be at least one window, context_length = {T}")
    if is_mixture_spelling(str(data_path)):
        raise ConfigError(f"--data {data_path}: evaluates one dataset, not a mixture; evaluate each source on its own")
    data = open_dataset(data_path, notice)
    if data.num_tokens == 0:
        raise DataError(f"{data_path}: holds no tokens")
    meta = data.meta()
    data_path = data.path
    want = (trained.state.get("tokenizer") or {}).get("hash")
    if want and meta.tokenizer_hash and meta.tokenizer_hash != want:
        raise DataError(
            f"{data_path}: encoded with tokenizer {meta.tokenizer_hash}, but {trained.path.name} was trained with {want}; "
            "re-encode it with the model's tokenizer"
        )
    windows = (meta.num_tokens - 1) // T  # each window reads T inputs plus the next token
    if windows == 0:
        raise DataError(f"{data_path}: {meta.num_tokens} tokens is shorter than one window of context_length + 1 = {T + 1}")
    if max_tokens is not None:
        windows = min(windows, max_tokens // T)
    # --batch-size is only a speed knob, but a huge one would try to allocate the whole file's
    # activations at once: refuse before allocating anything.
    need, avail = batch_bytes(trained.config, min(batch_size, windows)), available_bytes(trained.runtime.device)
    if avail is not None and need > avail:
        fits = max(1, min(batch_size, windows) * avail // need // 2)
        raise ConfigError(
            f"--batch-size {batch_size} needs about {need / 2**30:.2f} GiB per batch but only {avail / 2**30:.2f} GiB "
            f"is available on {trained.runtime.device}; lower --batch-size (e.g. {fits}; the results do not change)"
        )
    tok_vocab = tokenizer_vocab(meta)
    if tok_vocab is not None and tok_vocab > V:
        raise DataError(
            f"{data_path}: encoded with a tokenizer of {tok_vocab} ids, but {trained.path.name} has {V}; "
            "encode the data with the model's tokenizer"
        )
    used = windows * T + 1
    check_token_ids(data, V, data_path, used)
    total = _sum_nats(trained, data, windows, batch_size, autocast_dtype, progress)
    tokens = windows * T
    loss = total / tokens
    covered = meta.source_bytes * tokens / meta.num_tokens if meta.source_bytes else None
    return EvalResult(
        loss=loss, perplexity=math.exp(min(loss, 700.0)), bits_per_byte=total / math.log(2) / covered if covered else None,
        tokens=tokens, windows=windows, total_nats=total, source_bytes=covered, context_length=T,
        data=str(data_path), checkpoint=str(trained.path), device=str(trained.runtime.device),
        dtype=str(autocast_dtype or trained.runtime.dtype).removeprefix("torch."),
    )


@torch.inference_mode()
def _sum_nats(
    trained: Trained,
    used: np.ndarray | TokenData,
    windows: int,
    batch_size: int,
    autocast_dtype: torch.dtype | None,
    progress: Callable[[int, int], None] | None,
) -> float:
    """Summed next-token cross-entropy over ``windows`` consecutive windows of ``used``."""
    model, device, T = trained.model, trained.runtime.device, trained.config.context_length
    if autocast_dtype is None:
        autocast = trained.runtime.autocast
    else:
        enabled = autocast_dtype != next(model.parameters()).dtype
        autocast = functools.partial(torch.autocast, device.type, dtype=autocast_dtype, enabled=enabled)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, windows, batch_size):
        b = min(batch_size, windows - start)
        chunk = torch.from_numpy(np.asarray(used[start * T : (start + b) * T + 1], dtype=np.int64)).to(device)
        x = chunk[:-1].view(b, T)  # (B, T): window k is tokens kT .. kT+T-1
        y = chunk[1:].view(b, T)  # (B, T): each shifted by one, the token to predict
        with autocast():
            h = model.hidden(x).flatten(0, 1)  # (B*T, D)
            for r in range(0, h.shape[0], _CE_ROWS):
                logits = model.lm_head(h[r : r + _CE_ROWS]).float()  # (rows, V), CE in fp32
                total += F.cross_entropy(logits, y.flatten()[r : r + _CE_ROWS], reduction="sum")
        if progress is not None:
            progress((start + b) * T, windows * T)
    return float(total)  # the one read-back, after the whole pass


def evaluate_checkpoint(
    checkpoint: Path | str,
    data_path: Path | str,
    batch_size: int = 8,
    max_tokens: int | None = None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    notice: Callable[[str], None] = lambda m: None,
) -> EvalResult:
    """Load a checkpoint and ``evaluate`` it, as ``lmkit eval`` does.

    The weights stay in float32 and the forward runs under autocast in ``dtype`` (``auto``:
    bfloat16 on CUDA, float32 on CPU), as in training, so CPU and CUDA agree to bf16 precision.
    No tokenizer is needed.

    Args:
        checkpoint: checkpoint file or run directory.
        data_path: ``.bin`` token file, or a text file of token ids.
        batch_size: windows per forward pass.
        max_tokens: evaluate at most this many tokens.
        device: ``auto``, ``cuda`` or ``cpu``.
        dtype: ``auto``, ``bfloat16`` or ``float32``.
        progress, notice: see ``evaluate``.

    Returns:
        ``EvalResult``.
    """
    # Device and dtype resolved once, in load_trained; float32 weights + autocast, as in training.
    trained = load_trained(checkpoint, device, dtype, tokenizer="none", compile=False, weights="float32")
    return evaluate(trained, data_path, batch_size, max_tokens, progress=progress, notice=notice)
