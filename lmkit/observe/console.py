"""Plain log lines for places that are not a live terminal: CI logs, ``| tee``, SLURM output files.

One line per call, no colour or cursor codes, flushed at once so ``tail -f`` keeps up:

    step 100/5000 | loss 3.2154 | lr 3.00e-04 | grad 0.84 | 12.3k tok/s | 45.1 ms/step | mfu 41.2%
    step 500/5000 | val loss 3.3012 | best 3.2990
    checkpoint saved: runs/x/ckpt_0000500.pt

Lines go to stderr by default, like the dashboard, so stdout stays free for results. If the
reader goes away (``| head``, a closed terminal) the lines stop and ``output_lost`` says why; the
trainer then stops with a checkpoint (see ``lmkit.observe.streams``).
"""

from __future__ import annotations

import time
from typing import TextIO

from lmkit.observe.base import RunInfo
from lmkit.observe.streams import SafeStream
from lmkit.observe.text import (
    Pace,
    best_of,
    describe_event,
    fmt_count,
    fmt_duration,
    fmt_loss,
    fmt_lr,
    fmt_percent,
    fmt_sources,
    fmt_task_scores,
)

# Keys that make a "train" line; a log call holding only val_loss/best_val_loss is an eval line.
_TRAIN_KEYS = ("loss", "lr", "grad_norm", "tokens_per_s", "step_ms", "mfu", "gpu_mem_gb")


def format_train_line(step: int, max_iters: int, m: dict[str, float]) -> str:
    """``step 100/5000 | loss 3.2154 | lr 3.00e-04 | ...`` with only the fields present in ``m``."""
    parts = [f"step {step}/{max_iters}"]
    if "loss" in m:
        parts.append(f"loss {fmt_loss(m['loss'])}")
    if "lr" in m:
        parts.append(f"lr {fmt_lr(m['lr'])}")
    if "grad_norm" in m:
        parts.append(f"grad {m['grad_norm']:.2f}")
    if "tokens_per_s" in m:
        parts.append(f"{fmt_count(m['tokens_per_s'])} tok/s")
    if "step_ms" in m:
        parts.append(f"{m['step_ms']:.1f} ms/step")
    if "mfu" in m:
        parts.append(f"mfu {fmt_percent(m['mfu'])}")
    if "gpu_mem_gb" in m:
        parts.append(f"mem {m['gpu_mem_gb']:.1f} GB")
    if m.get("skipped_steps", 0) > 0:
        parts.append(f"skipped {int(m['skipped_steps'])}")
    if m.get("tokens_by_source"):
        parts.append(f"sources {fmt_sources(m['tokens_by_source'])}")
    return " | ".join(parts)


def format_eval_line(step: int, max_iters: int, m: dict[str, float]) -> str:
    """``step 500/5000 | val loss 3.3012 | best 3.2990``."""
    parts = [f"step {step}/{max_iters}", f"val loss {fmt_loss(m['val_loss'])}"]
    if "best_val_loss" in m:
        parts.append(f"best {fmt_loss(m['best_val_loss'])}")
    return " | ".join(parts)


class ConsoleSink:
    """Writes plain, flushed log lines (see the module docstring)."""

    name = "console"

    def __init__(self, file: TextIO | None = None):
        """Create the sink; ``file`` is where lines go (None: ``sys.stderr`` at write time)."""
        self._out = SafeStream(file)  # None: sys.stderr as it is at each write
        self._info: RunInfo | None = None
        self._t0 = time.monotonic()
        self._step = 0
        self._best_val: float | None = None
        self._pace = Pace()

    @property
    def output_lost(self) -> str | None:
        """Why the lines stopped (e.g. "stderr closed: broken pipe"), or None."""
        return self._out.closed_reason

    def _write(self, line: str) -> None:
        self._out.write(line + "\n")
        self._out.flush()

    def start(self, info: RunInfo) -> None:
        """Print the run header (and where a resumed run picks up)."""
        self._info, self._t0, self._step = info, time.monotonic(), info.start_iter
        gpus = f" x{info.world_size}" if info.world_size > 1 else ""
        self._write(
            f"{info.title} | {info.device}{gpus} {info.dtype} | {fmt_count(info.num_params)} params"
            f" | {fmt_count(info.tokens_per_step)} tok/step | {info.max_iters} steps"
            f" | {info.run_dir}"
        )
        if info.resumed:
            self._write(f"resumed at step {info.start_iter}")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """One train line and/or one eval line, depending on the keys present."""
        self._step = step
        max_iters = self._info.max_iters if self._info else step
        if any(k in metrics for k in _TRAIN_KEYS):
            line = format_train_line(step, max_iters, metrics)
            self._pace.update(metrics)
            if self._info is not None:
                elapsed = time.monotonic() - self._t0
                eta = self._pace.eta(step, self._info.start_iter, max_iters, elapsed)
                line += f" | eta {fmt_duration(eta)}"
            self._write(line)
        if "val_loss" in metrics:
            self._best_val = best_of(self._best_val, metrics)
            self._write(format_eval_line(step, max_iters, metrics))
        if tasks := fmt_task_scores(metrics):
            self._write(f"step {step}/{max_iters} | tasks {tasks}")

    def event(self, message: str, kind: str = "info") -> None:
        """The message, naming its kind once (``describe_event``)."""
        self._write(describe_event(message, kind))

    def close(self, status: str = "finished") -> None:
        """A closing summary line."""
        max_iters = self._info.max_iters if self._info else self._step
        elapsed = fmt_duration(time.monotonic() - self._t0)
        line = f"{status} at step {self._step}/{max_iters} in {elapsed}"
        if self._best_val is not None:
            line += f" | best val loss {fmt_loss(self._best_val)}"
        self._write(line)
