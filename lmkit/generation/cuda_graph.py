"""The decode step compiled once and captured in a CUDA graph that advances its own state.

A token of a small model is ~130 GPU kernels of a few microseconds each. Launched one by one
from Python they take longer than they run; replayed from one CUDA graph they run back to back.
``torch.compile``'s own CUDA-graph mode (``reduce-overhead``) does that too, but each call still
pays for Dynamo's guards and the graph tree's input checks (tens of microseconds, a tenth of a
GPT-2-small token). Here the graph is captured by hand around static buffers: it reads the
current token and position, writes the next token over the current one and advances the
position, so producing a token is one ``replay()`` and the host never waits for the GPU.
One graph is captured per attention span (the cache prefix attended over, see
``attention_spans``), so early tokens do not pay for attending over the whole context.

Notation: B batch size, V vocab_size.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Iterator

import torch

from lmkit.generation.sampling import exponential_noise
from lmkit.model import TransformerLM


@functools.lru_cache(maxsize=1)
def _compiled_step():
    # Coordinate-descent tuning of the small matrix-vector and reduction kernels measured
    # ~10 % faster per token than Inductor's defaults (benchmarks/GENERATE.md). No CUDA graphs
    # here: the whole step is captured below. dynamic=False: one specialised graph per span.
    from lmkit.generation.generate import decode_one_token

    return torch.compile(
        decode_one_token, fullgraph=True, dynamic=False, options={"coordinate_descent_tuning": True}
    )


MIN_SPAN = 128  # shortest attention span captured; spans double up to the cache length


def attention_spans(max_len: int) -> list[int]:
    """The cache prefixes a decoder attends over, shortest first: 128, 256, ..., max_len.

    A token at position p uses the shortest span above p, so early tokens do not read (and mask
    out) the whole cache: attention costs follow the sequence length in steps of 2x, while
    every step keeps the static shapes a CUDA graph needs.
    """
    spans, span = [], MIN_SPAN
    while span < max_len:
        spans.append(span)
        span *= 2
    return spans + [max_len]


class GraphedDecoder:
    """The decode step for one model, batch size and sampling setting, one graph per span.

    The graphs hold raw pointers to the model's weights, its KV caches and stacked decoding
    weights, so they stay valid while those tensors are updated in place (an optimizer step,
    ``refresh_decode_weights``) and must be rebuilt when they are reallocated (``to()``,
    ``setup_cache``, which bump ``model.cache_version``); ``decoder_for`` takes care of that.
    """

    def __init__(
        self, model: TransformerLM, batch_size: int, temperature: float, top_k: int | None, top_p: float | None
    ) -> None:
        device = model.lm_head.weight.device
        self.sampling = (temperature, top_k, top_p)
        self.spans = attention_spans(model.blocks[0].attn.kv_cache.max_len)
        self.token = torch.zeros(batch_size, dtype=torch.long, device=device)  # (B,)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)  # (1,)
        self.noise = None
        if temperature > 0:
            self.noise = torch.ones(batch_size, model.config.vocab_size, device=device)  # (B, V)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        # One memory pool for all spans: their intermediates are never alive between replays
        # (each graph copies its result into self.token).
        self.pool = torch.cuda.graph_pool_handle()

    def _graph(self, model: TransformerLM, span: int) -> torch.cuda.CUDAGraph:
        if span in self.graphs:
            return self.graphs[span]
        args = (model, self.token, self.pos, *self.sampling, self.noise, span)
        step = _compiled_step()
        device = self.token.device
        # Compile and autotune outside the capture, on a side stream as capture requires. These
        # runs read the current token and position, so they write exactly the keys and values
        # the replay that follows writes again; their output is dropped.
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                step(*args)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            self.token.copy_(step(*args))
            self.pos.add_(1)
        self.graphs[span] = graph
        return graph

    def run(
        self, model: TransformerLM, token: torch.Tensor, start: int, num_new_tokens: int, generator: torch.Generator
    ) -> Iterator[torch.Tensor]:
        """Yield ``num_new_tokens`` (B,) tokens after ``token`` at position ``start`` (as decode_n_tokens).

        The next step is always queued before the current token is handed out, so the GPU keeps
        working while the caller reads a token back (e.g. to print it or to test for a stop).
        """
        self.token.copy_(token)
        self.pos.fill_(start)
        ready = None
        for pos in range(start, start + num_new_tokens):
            graph = self._graph(model, next(s for s in self.spans if s > pos))
            if self.noise is not None:
                # The same draws, in the same order, as the uncompiled loop makes.
                exponential_noise(self.noise.shape, generator, out=self.noise)
            graph.replay()
            new = self.token.clone()  # the graph overwrites self.token on the next replay
            if ready is not None:
                yield ready
            ready = new
        if ready is not None:
            yield ready


# Decoders per model, keyed by what a graph is specific to; dropped with the model.
_decoders: weakref.WeakKeyDictionary[TransformerLM, dict[tuple, GraphedDecoder]] = weakref.WeakKeyDictionary()
_MAX_PER_MODEL = 4  # distinct (batch, sampling) settings kept; each holds a small memory pool


def decoder_for(
    model: TransformerLM, batch_size: int, temperature: float, top_k: int | None, top_p: float | None
) -> GraphedDecoder:
    """A decoder for this model's current weights and caches, reused when possible.

    Call it after ``setup_cache``. Graphs are captured on first use of each span.
    """
    cache = _decoders.setdefault(model, {})
    # A new cache_version means the caches or weights were reallocated: older graphs would
    # read freed memory.
    for stale in [k for k in cache if k[0] != model.cache_version]:
        del cache[stale]
    key = (model.cache_version, batch_size, temperature, top_k, top_p)
    if key not in cache:
        if len(cache) >= _MAX_PER_MODEL:
            cache.pop(next(iter(cache)))
        cache[key] = GraphedDecoder(model, batch_size, temperature, top_k, top_p)
    return cache[key]
