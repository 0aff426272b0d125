"""How a training run is asked to stop: signals, a closed terminal or output pipe.

Every way a user stops a run (Ctrl-C, SIGTERM, SIGHUP from a closed terminal, a stdout/stderr
whose reader went away) becomes one request: the trainer finishes the step, saves a checkpoint
and exits with 128 + the signal (130, 143, 129; 141, SIGPIPE's number, for a closed output). A
second Ctrl-C aborts at once. Under ``nohup`` (SIGHUP ignored by the parent) the user asked the
run to outlive its terminal: a lost output then only silences the console.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path

from lmkit.errors import TrainingError
from lmkit.settings import Settings
from lmkit.training import checkpoint as ckpt

# Why a run stopped, as the stop event words it, keyed by signal number.
SIGNAL_WORDS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}
if hasattr(signal, "SIGHUP"):  # not on Windows
    SIGNAL_WORDS[signal.SIGHUP] = "SIGHUP: terminal closed"
OUTPUT_CLOSED_EXIT = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader left


class TrainingInterrupted(TrainingError):
    """A requested stop. Exit 128 + the signal: 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP (terminal
    closed), 141 a closed output (SIGPIPE's number); a checkpoint was written, except after a
    second Ctrl-C ("aborted", which says so)."""


class StopRequests:
    """The stop requests of one process, recorded by signal handlers and read by the loop."""

    def __init__(self) -> None:
        self.signal: int | None = None  # the signal this process received
        self.reason: str | None = None  # why this process asked to stop (signal, closed output)
        self._nohup = False
        self._output_noted = False

    def install(self) -> dict:
        """Make Ctrl-C, SIGTERM and SIGHUP requests to stop after this step; returns the handlers
        replaced, for ``restore``.

        The handler only records the signal: it runs between two bytecodes of the training
        thread, which may be inside a sink holding a lock or half-way through a write, so the
        stop is reported from the loop (``reason_now``). SIGHUP stays ignored where the parent
        ignores it (``nohup``).
        """
        self._nohup = hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        self._output_noted = False
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):
            if self.signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # second Ctrl-C: abort now
            if self.signal is None:
                self.signal = signum

        # Only SIGHUP keeps a parent's "ignore" (that is what nohup asks for); SIGINT/SIGTERM are
        # ignored by shells for background jobs too, where an explicit kill must still stop cleanly.
        return {sig: signal.signal(sig, handler) for sig in SIGNAL_WORDS
                if not (self._nohup and sig == getattr(signal, "SIGHUP", None))}

    @staticmethod
    def restore(old: dict) -> None:
        """Put back the handlers ``install`` replaced."""
        for sig, handler in old.items():
            signal.signal(sig, handler)

    def reason_now(self, output_lost: str | None, event: Callable[[str, str], None]) -> str | None:
        """Why this process wants to stop now, given the sinks' lost output (if any); the first
        time there is a reason, ``event`` hears it (the stop line of the dashboard and logs)."""
        if self.reason is None:
            if self.signal is not None:
                self.reason = SIGNAL_WORDS.get(self.signal, f"signal {self.signal}")
            elif output_lost is not None:
                if not self._nohup:
                    self.reason = output_lost
                elif not self._output_noted:
                    self._output_noted = True
                    event(f"{output_lost}: console output off; training goes on (nohup), metrics.jsonl still records it", "warning")
            if self.reason is not None:
                why = "Ctrl-C; press it again to abort" if self.signal == signal.SIGINT else self.reason
                event(f"stop requested ({why}): saving a checkpoint, then exiting", "stop")
        return self.reason

    def exit_code(self) -> int:
        """128 + the signal; 141 for a closed output; 130 when another rank asked."""
        if self.signal is not None:
            return 128 + int(self.signal)
        return OUTPUT_CLOSED_EXIT if self.reason is not None else 130


def aborted(run_dir: Path, step: int, last_checkpoint: Path | None) -> TrainingInterrupted:
    """The error a second Ctrl-C ends with: which checkpoint is the last, and whether to resume."""
    latest = run_dir / ckpt.LATEST  # a resumed run that has not saved yet resumes from it
    last = last_checkpoint or (latest if latest.exists() else None)
    if last is not None and last.name == ckpt.checkpoint_name(step):
        saved = f"checkpoint for this step: {last}"
    else:
        saved = f"no checkpoint written for this step; last checkpoint: {last or 'none'}"
    resume = "run the same command again to resume from it" if last else "nothing to resume from"
    return TrainingInterrupted(f"aborted at step {step}: {saved} ({resume})", exit_code=130)


def oom_error(settings: Settings, world_size: int, step: int, last_checkpoint: Path | None) -> TrainingError:
    """CUDA ran out of memory mid-run: the fields that lower it, and the last checkpoint."""
    t, m = settings.train, settings.model
    micro = t.batch_size // (t.grad_accum_steps * world_size)
    hint = (
        f"lower --batch-size ({t.batch_size}) or raise --grad-accum-steps ({t.grad_accum_steps}; "
        f"micro-batch is {micro}), or lower --context-length ({m.context_length})"
    )
    if not t.activation_checkpointing:
        hint += ", or recompute activations in backward with --activation-checkpointing"
    if world_size > 1 and t.parallel == "ddp":
        hint += ", or shard the model with --parallel fsdp"
    return TrainingError(f"out of GPU memory at step {step}: {hint}. Last checkpoint: {last_checkpoint or 'none'}")
