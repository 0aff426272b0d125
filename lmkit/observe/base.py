"""The interface the trainer talks to: ``Sink``, the ``RunInfo`` it starts with, ``MultiSink``.

The trainer never knows which sinks exist. It is given a ``MultiSink`` (``lmkit.observe.sinks.make_sinks``
builds the standard one) and calls:

    sinks.start(info)                     once, before the first step
    sinks.log(step, {"loss": 3.2, ...})   every log_interval and at eval steps (any subset of keys)
    sinks.event("checkpoint saved: ...", kind="checkpoint")
    sinks.close("finished")               "finished" | "interrupted" | "aborted" | "failed"

Metric keys (each optional; sinks render what is present): ``loss``, ``val_loss``,
``best_val_loss``, ``lr``, ``grad_norm``, ``tokens_per_s``, ``mfu`` (fraction 0-1, CUDA only),
``step_ms``, ``gpu_mem_gb``, ``tokens_seen``, ``skipped_steps``, ``elapsed_s``, and for a mixture
``tokens_by_source`` (``{name: tokens}``, the one value that is a mapping).

Observing must never stop training: a sink that raises is reported once on stderr and dropped.
A closed terminal or pipe is not a sink failure: the console sinks go quiet and report it as
``output_lost``, which the trainer takes as a request to stop with a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from lmkit.observe.streams import SafeStream

@dataclass
class RunInfo:
    """What every sink learns once at the start of a run."""

    run_dir: Path  # checkpoints, metrics.jsonl and wandb/ live here
    max_iters: int  # last step of the run, for progress and ETA
    start_iter: int  # first step this process runs (> 0 when resumed)
    resumed: bool
    device: str  # e.g. "cuda", "cpu"
    dtype: str  # autocast dtype, e.g. "bfloat16"
    num_params: int
    tokens_per_step: int  # batch_size * context_length, summed over GPUs
    settings: dict[str, Any] = field(default_factory=dict)  # Settings.flat(), saved as W&B config
    world_size: int = 1
    wandb_run_id: str | None = None  # from a checkpoint: a resumed run continues its W&B run
    run_id: str | None = None  # lmkit's run id (run.json); a resumed run keeps it
    segment: int = 0  # 0 for a run's first process, +1 at every resume
    title: str = "lmkit train"


@runtime_checkable
class Sink(Protocol):
    """Something that shows or stores metrics. Every method is called from the training thread."""

    def start(self, info: RunInfo) -> None:
        """Called once before the first step."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Called every log_interval and at eval steps with whichever metric keys are known."""

    def event(self, message: str, kind: str = "info") -> None:
        """A one-line happening; kind is "checkpoint", "eval", "warning", "stop", "error", "info"
        or "resume". Messages read on their own ("checkpoint saved: ..."); sinks that show the
        kind use ``describe_event`` so it is not said twice."""

    def close(self, status: str = "finished") -> None:
        """Called once at the end; status is "finished", "interrupted", "aborted" or "failed"."""


def _sink_name(sink: object) -> str:
    return getattr(sink, "name", type(sink).__name__)


class MultiSink:
    """Fans every call out to many sinks, isolating training from their failures.

    A sink that raises is reported once on stderr and disabled for the rest of the run; the other
    sinks carry on. Used as a context manager it closes with "finished", "interrupted" (Ctrl-C)
    or "failed" (any other exception) as the block ends.
    """

    def __init__(self, sinks: list[Sink] | None = None):
        self.sinks: list[Sink] = list(sinks or [])
        self._warnings = SafeStream()  # this class's own notices, on stderr

    def __len__(self) -> int:
        return len(self.sinks)

    @property
    def run_id(self) -> str | None:
        """The W&B run id once started (None without W&B); the trainer saves it in checkpoints."""
        for sink in self.sinks:
            run_id = getattr(sink, "run_id", None)
            if run_id is not None:
                return run_id
        return None

    @property
    def output_lost(self) -> str | None:
        """Why console output stopped ("stderr closed: broken pipe"), or None while it works."""
        for sink in self.sinks:
            if reason := getattr(sink, "output_lost", None):  # the console sinks have it
                return reason
        return self._warnings.closed_reason

    def _call(self, method: str, *args: Any, **kwargs: Any) -> None:
        for sink in list(self.sinks):
            try:
                getattr(sink, method)(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - a broken display must not stop training
                self.sinks.remove(sink)
                if method != "close":
                    try:  # let it release what it holds (a live display, a W&B process)
                        sink.close("failed")
                    except Exception:  # noqa: BLE001, S110 - already reporting this sink
                        pass
                message = f"{type(e).__name__}: {e}".splitlines()[0]
                self._warnings.write(
                    f"lmkit: warning: the {_sink_name(sink)} sink failed in {method}() "
                    f"({message}); it is disabled for the rest of this run\n"
                )
                self._warnings.flush()

    def start(self, info: RunInfo) -> None:
        """Start every sink; on Ctrl-C meanwhile (a slow W&B start), close those already started."""
        try:
            self._call("start", info)
        except KeyboardInterrupt:
            # Training has not begun: nothing to save, but a live display must give the
            # terminal back and metrics.jsonl should say how the run ended.
            self.close("interrupted")
            raise

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Send one step's metrics to every sink."""
        self._call("log", step, metrics)

    def event(self, message: str, kind: str = "info") -> None:
        """Send a one-line event to every sink."""
        self._call("event", message, kind)

    def close(self, status: str = "finished") -> None:
        """Close every sink (each sink is closed even if an earlier one fails)."""
        self._call("close", status)

    def __enter__(self) -> MultiSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close("finished")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close("interrupted")
        else:
            self.close("failed")
