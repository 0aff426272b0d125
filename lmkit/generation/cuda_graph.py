"""The decode step compiled once and captured in a CUDA graph that advances its own state.

A token of a small model is ~130 GPU kernels of a few microseconds each. Launched one by one
from Python they take longer than they run; replayed from one CUDA graph they run back to back.
``torch.compile``'s own CUDA-graph mode (``reduce-overhead``) does that too, but each call still
pays for Dynamo's guards and the graph tree's input checks (tens of microseconds, a tenth of a
GPT-2-small token). Here the graph is captured by hand around static buffers: it reads the
current token and position, writes the next token over the current one and advances the
position, so producing a token is one ``replay()`` and the host never waits for the GPU.

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
    # here: the whole step is captured below.
    from lmkit.generation.generate import decode_one_token

    return torch.compile(decode_one_token, fullgraph=True, options={"coordinate_descent_tuning": True})


class GraphedDecoder:
    """One captured decode step for a model, batch size and sampling setting.

    The graph holds raw pointers to the model's weights, its KV caches and stacked decoding
    weights, so it stays valid while those tensors are updated in place (an optimizer step,
    ``refresh_decode_weights``) and must be rebuilt when they are reallocated (``to()``,
    ``setup_cache``, which bump ``model.cache_version``); ``decoder_for`` takes care of that.
    """

    def __init__(
        self, model: TransformerLM, batch_size: int, temperature: float, top_k: int | None, top_p: float | None
    ) -> None:
        device = model.lm_head.weight.device
        self.token = torch.zeros(batch_size, dtype=torch.long, device=device)  # (B,)
        # Position 0 for the warm-up runs below: they write junk into cache slot 0, which the
        # next prefill overwrites (so a decoder must be built before its prefill).
        self.pos = torch.zeros(1, dtype=torch.long, device=device)  # (1,)
        self.noise = None
        if temperature > 0:
            self.noise = torch.ones(batch_size, model.config.vocab_size, device=device)  # (B, V)
        args = (model, self.token, self.pos, temperature, top_k, top_p, self.noise)
        step = _compiled_step()
        # Compile and autotune outside the capture, on a side stream as graph capture requires.
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                step(*args)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.token.copy_(step(*args))
            self.pos.add_(1)

    def run(
        self, token: torch.Tensor, input_pos: torch.Tensor, num_new_tokens: int, generator: torch.Generator
    ) -> Iterator[torch.Tensor]:
        """Yield ``num_new_tokens`` (B,) tokens after ``token`` at ``input_pos`` (as decode_n_tokens).

        The next step is always queued before the current token is handed out, so the GPU keeps
        working while the caller reads a token back (e.g. to print it or to test for a stop).
        """
        self.token.copy_(token)
        self.pos.copy_(input_pos)
        ready = None
        for _ in range(num_new_tokens):
            if self.noise is not None:
                # The same draws, in the same order, as the uncompiled loop makes.
                exponential_noise(self.noise.shape, generator, out=self.noise)
            self.graph.replay()
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
    """A captured decoder for this model's current weights and caches, reused when possible.

    Call it after ``setup_cache`` and before prefill (building one runs the step twice).
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
