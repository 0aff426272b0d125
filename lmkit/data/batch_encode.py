"""Encoding batches of texts in order, in this process: threads over the fast encoder.

``encode_corpus`` (lmkit/data/encode.py) hands its batches here when it reads the input itself
(``parallel="threads"``, or input too small for worker processes). tiktoken's core releases the
GIL, so threads encode at once; a tokenizer the fast encoder cannot express falls back to lmkit's
pure-Python encoder, in spawned processes for large inputs. Each text comes back with its ids in
the dataset's dtype and its UTF-8 size (for bits per byte), measured here, off the writing thread.
"""

from __future__ import annotations

import collections
import multiprocessing
import pickle
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from lmkit.tokenizer import Tokenizer
from lmkit.tokenizer.fast import FastEncoder

# Each worker process gets its tokenizer once, at start-up, not with every task. It is pickled
# once here and the bytes are handed to every worker: the pool would otherwise pickle the
# tokenizer again for each worker (0.3 s each for GPT-2's, serially, before any work starts).
_worker_tokenizer: Tokenizer | None = None


def _init_worker(pickled: bytes) -> None:
    global _worker_tokenizer
    _worker_tokenizer = pickle.loads(pickled)


# An encode task returns each text's ids and its UTF-8 size (for bits per byte): measured
# there, in parallel, rather than in the thread that reads and writes.
def _encode_in_worker(texts: list[str], dtype: str) -> list[tuple[np.ndarray, int]]:
    return _encode_slow(_worker_tokenizer, texts, dtype)


def _encode_slow(tokenizer: Tokenizer, texts: list[str], dtype: str) -> list[tuple[np.ndarray, int]]:
    return [(np.asarray(tokenizer.encode(t), dtype=dtype), len(t.encode("utf-8", "surrogatepass"))) for t in texts]


def _encode_fast(encoder: FastEncoder, texts: list[str], dtype: str) -> list[tuple[np.ndarray, int]]:
    # The cast to the dataset's dtype happens here too, off the thread that writes.
    return [(encoder.encode(t).astype(dtype, copy=False), len(t.encode("utf-8", "surrogatepass"))) for t in texts]


def encoded_batches(tokenizer: Tokenizer, batches: Iterator[tuple[list, list[str]]], threads: int,
                    big: bool, dtype: str) -> Iterator[tuple[list, list[tuple[np.ndarray, int]]]]:
    """Encode batches of texts in order, a bounded number in flight.

    tiktoken's core (``FastEncoder``) releases the GIL, so threads encode in parallel and start
    at once; only a tokenizer it cannot express falls back to worker processes (spawned, not
    forked: the caller may hold threads, a progress bar, that fork would copy mid-lock). Workers
    that also read and parse their own input are the other path (``lmkit.data.parallel``).
    """
    fast = tokenizer.fast_encoder()  # built once per tokenizer, cached on it
    processes = big and threads > 1 and fast is None
    if not processes and (threads <= 1 or fast is None):
        for tags, texts in batches:
            yield tags, (_encode_fast(fast, texts, dtype) if fast is not None else _encode_slow(tokenizer, texts, dtype))
        return
    if not processes:
        pool = ThreadPoolExecutor(threads, thread_name_prefix="lmkit-encode")
        submit = lambda texts: pool.submit(_encode_fast, fast, texts, dtype)  # noqa: E731
        get = lambda fut: fut.result()  # noqa: E731
    else:
        pool = multiprocessing.get_context("spawn").Pool(threads, _init_worker, (pickle.dumps(tokenizer),))
        submit = lambda texts: pool.apply_async(_encode_in_worker, (texts, dtype))  # noqa: E731
        get = lambda res: res.get()  # noqa: E731
    try:
        in_flight: collections.deque = collections.deque()
        for tags, texts in batches:
            in_flight.append((tags, submit(texts)))
            if len(in_flight) >= 2 * threads:
                tags0, fut = in_flight.popleft()
                yield tags0, get(fut)
        while in_flight:
            tags0, fut = in_flight.popleft()
            yield tags0, get(fut)
    finally:
        if isinstance(pool, ThreadPoolExecutor):
            pool.shutdown(wait=True, cancel_futures=True)
        else:
            pool.terminate()
            pool.join()
