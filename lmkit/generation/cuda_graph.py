"""The decode step compiled once and captured in a CUDA graph that advances its own state.

A token of a small model is over a hundred GPU kernels of a few microseconds each. Launched one
by one from Python they take longer than they run; replayed from one CUDA graph they run back to
back. ``torch.compile``'s own CUDA-graph mode (``reduce-overhead``) does that too, but each call
still pays for Dynamo's guards and the graph tree's input checks, a noticeable part of a small
model's token. Here the graph is captured by hand around static buffers: it reads the
current token and position, writes the next token over the current one and advances the
position, so producing a few tokens is one ``replay()`` and the host never waits for the GPU.

Notation: B batch size, V vocab_size.
"""

from __future__ import annotations

import functools
import itertools
import weakref
from collections.abc import Callable, Iterator

import torch

from lmkit.generation.sampling import exponential_noise
from lmkit.model import TransformerLM

StepFn = Callable[..., torch.Tensor]


@functools.cache
def _compiled_step(step_fn: StepFn, tuning: bool) -> StepFn:
    # Coordinate-descent tuning (kernels.decode_tuning) of the small matrix-vector and reduction
    # kernels gives faster tokens than Inductor's defaults. No CUDA graphs here: the whole step
    # is captured below.
    # One process may decode from many models, shapes and kernel plans (a notebook, a test run):
    # each compiles this same step function again, and past Dynamo's default of 8 recompiles
    # a fullgraph compile fails outright. Each recompile here is a real new configuration.
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), 64))
    return torch.compile(step_fn, fullgraph=True, options={"coordinate_descent_tuning": tuning})


class GraphedDecoder:
    """Captured decode steps for a model, batch size and sampling setting.

    Two graphs over the same state: one that runs ``steps`` decode steps and one that runs a
    single step (for the remainder, so no step ever writes past the tokens asked for).

    The graphs hold raw pointers to the model's weights, its KV caches and stacked decoding
    weights, so they stay valid while those tensors are updated in place (an optimizer step,
    ``kernels.decode.apply_decode``) and must be rebuilt when they are reallocated (``to()``,
    ``setup_cache``); ``decoder_for`` takes care of that.

    Args:
        model: the model after ``setup_cache`` (and the decode layers' swap-in).
        batch_size: sequences decoded together.
        temperature, top_k, top_p: the sampling setting the graphs are captured for.
        step_fn: ``generate.decode_one_token``, compiled here.
        steps: decode steps per replay (``kernels.decode_steps_per_replay``).
        tuning: Inductor's coordinate-descent tuning (``kernels.decode_tuning``).
    """

    def __init__(
        self, model: TransformerLM, batch_size: int, temperature: float, top_k: int | None, top_p: float | None,
        step_fn: StepFn, steps: int = 4, tuning: bool = True,
    ) -> None:
        device = model.lm_head.weight.device
        steps = min(steps, model.blocks[0].attn.kv_cache.max_len)  # the warm-up writes slots 0..steps-1
        self.steps = steps
        self.token = torch.zeros(batch_size, dtype=torch.long, device=device)  # (B,)
        self.out = torch.zeros(steps, batch_size, dtype=torch.long, device=device)  # (steps, B)
        # Position 0 for the warm-up runs below: they write junk into cache slots 0..steps-1,
        # each rewritten (by the prefill or by its own decode step) before any query sees it;
        # but a decoder must be built before its prefill.
        self.pos = torch.zeros(1, dtype=torch.long, device=device)  # (1,)
        self.noise = None  # (steps, B, V): one draw per step
        if temperature > 0:
            self.noise = torch.ones(steps, batch_size, model.config.vocab_size, device=device)
        step = _compiled_step(step_fn, tuning)

        def run_steps(n: int) -> None:
            for i in range(n):
                noise = None if self.noise is None else self.noise[i]
                self.token.copy_(step(model, self.token, self.pos, temperature, top_k, top_p, noise))
                self.out[i].copy_(self.token)
                self.pos.add_(1)

        # Compile and autotune outside the capture (with every noise slice the graphs will read),
        # on a side stream as graph capture requires.
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self.pos.zero_()
                run_steps(steps)
        torch.cuda.current_stream(device).wait_stream(side)
        self.pos.zero_()
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}  # steps per replay -> graph
        pool = None  # the graphs share one memory pool: they never run at the same time
        for n in sorted({steps, 1}, reverse=True):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                run_steps(n)
            pool = graph.pool()
            self.graphs[n] = graph

    def run(
        self, token: torch.Tensor, input_pos: torch.Tensor, num_new_tokens: int, generator: torch.Generator
    ) -> Iterator[torch.Tensor]:
        """Yield ``num_new_tokens`` (B,) tokens after ``token`` at ``input_pos`` (as decode_n_tokens).

        The next replay is always queued before the previous one's tokens are handed out, so the
        GPU keeps working while the caller reads a token back (e.g. to print it or to test for a
        stop). The graphs read the position from ``self.pos``, so when the window slides (an
        eager re-prefill of the cache's first slots between two runs) the same graphs serve the
        next run from the new position.
        """
        self.token.copy_(token)
        self.pos.copy_(input_pos)
        ready: list[torch.Tensor] = []
        remaining = num_new_tokens
        while remaining > 0:
            n = self.steps if remaining >= self.steps else 1
            if self.noise is not None:
                for i in range(n):
                    # The same draws, in the same order, as the uncompiled loop makes.
                    exponential_noise(self.noise.shape[1:], generator, out=self.noise[i])
            self.graphs[n].replay()
            new = self.out[:n].clone()  # (n, B): the next replay overwrites self.out
            yield from ready
            ready = list(new.unbind(0))
            remaining -= n
        yield from ready


# Decoders per model, keyed by what a graph is specific to; dropped with the model.
_decoders: weakref.WeakKeyDictionary[TransformerLM, dict[tuple, GraphedDecoder]] = weakref.WeakKeyDictionary()
_MAX_PER_MODEL = 4  # distinct (batch, sampling) settings kept; each holds a small memory pool


def _addresses(model: TransformerLM) -> tuple:
    """Where every tensor a captured graph reads lives: parameters and buffers (caches, stacked
    decode weights, RoPE tables). A graph is valid exactly while these are unchanged."""
    return tuple((t.data_ptr(), t.dtype, t.shape) for t in itertools.chain(model.parameters(), model.buffers()))


def decoder_for(
    model: TransformerLM, batch_size: int, temperature: float, top_k: int | None, top_p: float | None,
    step_fn: StepFn, steps: int = 4, tuning: bool = True,
) -> GraphedDecoder:
    """A captured decoder for this model's current weights and caches, reused when possible.

    Call it after ``setup_cache`` and before prefill (building one runs the step twice). The
    arguments are ``GraphedDecoder``'s.
    """
    cache = _decoders.setdefault(model, {})
    addresses = _addresses(model)
    # Tensors reallocated (to(), a new cache): older graphs would read freed memory.
    for stale in [k for k in cache if k[0] != addresses]:
        del cache[stale]
    key = (addresses, batch_size, temperature, top_k, top_p, step_fn, steps, tuning)
    if key not in cache:
        if len(cache) >= _MAX_PER_MODEL:
            cache.pop(next(iter(cache)))
        cache[key] = GraphedDecoder(model, batch_size, temperature, top_k, top_p, step_fn, steps, tuning)
    return cache[key]
