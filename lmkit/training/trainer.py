"""The training loop: one ``Trainer`` owning model, optimizer, data and checkpoints.

The hot loop never reads a value back from the GPU on ordinary steps: losses, gradient norms and
the count of non-finite steps accumulate on the device and are read at ``log_interval``. (The one
exception is ``on_nan=skip``, which must decide before every optimizer step; documented there.)
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmkit.data.loader import eval_batches
from lmkit.data.tokens import atomic_write_bytes
from lmkit.errors import LmkitError, TrainingError
from lmkit.locking import OutputLock
from lmkit.observe.base import MultiSink, RunInfo
from lmkit.observe.streams import say
from lmkit.settings import Settings, settings_to_yaml
from lmkit.training import checkpoint as ckpt
from lmkit.training import rundir
from lmkit.training.distributed import Distributed
from lmkit.training.optim import clip_gradients
from lmkit.training.runtime import Runtime, resolve_runtime
from lmkit.training.schedule import schedule_lr
from lmkit.training.setup import build_run
from lmkit.training.stopping import StopRequests, TrainingInterrupted, aborted, oom_error


@dataclass
class TrainResult:
    """What a finished (or interrupted) run produced."""

    run_dir: Path
    status: str  # "finished" | "interrupted" (stopped with a checkpoint)
    step: int  # optimizer steps completed
    tokens_seen: int
    train_loss: float | None
    val_loss: float | None
    best_val_loss: float | None
    last_checkpoint: Path | None
    elapsed_s: float


def _stderr_notice(message: str) -> None:
    """Default for notices raised before any sink exists (resume, data conversion)."""
    say(f"lmkit: {message}")  # a closed stderr silences it rather than failing the run


class Trainer:
    """Train ``TransformerLM`` as ``settings`` describe, reporting to ``sinks``.

    Args:
        settings: the resolved settings tree.
        sinks: metric sinks (dashboard, logs, JSONL, W&B); none by default.
        notice: where one-line notices go before sinks exist (default: print to stderr).
    """

    def __init__(self, settings: Settings, sinks: MultiSink | None = None, notice=None):
        self.settings = settings
        self.sinks = sinks or MultiSink([])
        self.notice = notice or _stderr_notice
        self.rt: Runtime = resolve_runtime(settings.runtime.device, settings.runtime.dtype, settings.runtime.compile)
        self.dist = Distributed.setup(self.rt)
        self.run_dir = Path(settings.checkpoint.checkpoint_dir)
        self.step = 0
        self.best_val_loss: float | None = None
        self.last_val_loss: float | None = None
        self.last_train_loss: float | None = None
        self.last_checkpoint: Path | None = None
        self.elapsed_before = 0.0
        self.skipped_steps = 0
        self.wandb_run_id: str | None = None
        self.stops = StopRequests()
        self._stopped = False  # whether the run stopped early (agreed by every rank)
        self.run_record: rundir.RunRecord | None = None  # this run's id, segment, checkpoints (rank 0)
        self._resumed_identity: dict[str, Any] | None = None  # run id/segment of the checkpoint resumed
        self._run_lock = self._claim_run_dir()
        t_build = time.time()
        try:
            self._build()
        except BaseException:
            self.release_run_dir()
            raise
        self.build_s = time.time() - t_build  # resume, data, model, optimizer: said beside the first step's time

    # ------------------------------------------------------------------ setup
    def _claim_run_dir(self) -> OutputLock | None:
        """Rank 0 locks the run directory before the build (a refused run costs nothing) and holds
        it until ``run()`` ends; every rank learns of a refusal, so none waits on a missing peer."""
        lock, refused = None, None
        if self.rt.is_main:
            try:
                lock = rundir.claim_run_dir(self.run_dir)
            except LmkitError as e:
                refused = e
        if self.dist.any(refused is not None):  # without torchrun: just the flag, no collective
            if refused is not None:
                raise refused
            raise TrainingError(f"rank {self.rt.rank}: rank 0 could not take the run directory {self.run_dir} (see its message)")
        return lock

    def release_run_dir(self) -> None:
        """Let go of the run directory (``run()`` does this however it ends; for a Trainer
        that is built but never run)."""
        if self._run_lock is not None:
            self._run_lock.release()

    def __del__(self) -> None:
        lock = getattr(self, "_run_lock", None)
        if lock is not None:
            lock.release()

    def _build(self) -> None:
        p = build_run(self.settings, self.rt, self.dist, self.run_dir, self.notice)
        self.settings, self.init_from, self.cooldown = p.settings, p.init_from, p.cooldown
        self.train_data, self.val_data, self.config, self.kernels = p.train_data, p.val_data, p.config, p.kernels
        self.model, self.wrapped, self.optimizer, self.loader = p.model, p.wrapped, p.optimizer, p.loader
        self.cuda_graphs, self.loss_fn, self.task_eval = p.cuda_graphs, p.loss_fn, p.task_eval
        self.regional = p.regional
        self.tokens_per_step = self.settings.train.batch_size * self.settings.model.context_length
        if p.state is not None:
            self._restore_counters(p.state)
            if p.fresh_cooldown:
                self._resumed_identity = None  # the cooldown is a run of its own (its own id in run.json)

    def _restore_counters(self, state: dict[str, Any]) -> None:
        self._resumed_identity = {"run_id": state.get("run_id"), "segment": state.get("segment")}
        self.step = int(state["iter"])
        self.best_val_loss = state.get("best_val_loss")
        self.last_val_loss = state.get("val_loss")
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.wandb_run_id = state.get("wandb_run_id")
        rng = state.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.rt.device.type == "cuda" and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])

    # ------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly (plus what ``ckpt inspect`` shows)."""
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if self.rt.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        tok_meta = self.train_data.meta
        return {
            "model": self.dist.full_state_dict(self.model),
            "optimizer": self.dist.optimizer_state_dict(self.model, self.optimizer),
            "iter": self.step,
            "tokens_seen": self.step * self.tokens_per_step,
            "best_val_loss": self.best_val_loss,
            "val_loss": self.last_val_loss,
            "train_loss": self.last_train_loss,
            "skipped_steps": self.skipped_steps,
            "elapsed_s": self.elapsed_before + (time.time() - self._t_start),
            "rng": rng,
            "sampler": self.loader.state_dict(),
            "settings": self.settings.model_dump(mode="json"),
            "model_config": self.config.model_dump(),
            "wandb_run_id": self.wandb_run_id,
            "world_size": self.rt.world_size,
            "tokenizer": {"dir": tok_meta.tokenizer_dir, "hash": tok_meta.tokenizer_hash, "vocab_size": tok_meta.vocab_size},
            "init_from": self.init_from,  # {path, sha256, iter} of the checkpoint this run started from
            "cooldown": self.cooldown,  # {path, sha256, iter, cooldown_iters} of the wsd checkpoint this run decays
        }

    def save(self) -> Path | None:
        """Write ``ckpt_{step}.pt`` and point ``latest.pt`` at it (rank 0 writes; all ranks gather)."""
        state = self.state_dict()  # collective under FSDP: every rank must call it
        if not self.rt.is_main:
            self.dist.barrier()
            return None
        record = self.run_record
        state.update(run_id=record.run, segment=record.segment)
        path = ckpt.save_checkpoint(state, self.run_dir / ckpt.checkpoint_name(self.step))
        ckpt.link_latest(path)
        # Listed as this run's before pruning, so a crash in between never orphans it from the list.
        record.wrote(path.name)
        rundir.write_record(self.run_dir, record)
        removed = ckpt.prune_checkpoints(self.run_dir, self.settings.checkpoint.keep_last, record.checkpoints)
        if removed:
            record.forget([p.name for p in removed])
            rundir.write_record(self.run_dir, record)
        self.last_checkpoint = path
        self.sinks.event(f"checkpoint saved: {path}", "checkpoint")
        self.dist.barrier()
        return path

    # ------------------------------------------------------------------ eval
    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean loss on the fixed validation batches (averaged over ranks)."""
        if self.val_data is None:
            return None
        s = self.settings
        self.wrapped.eval()
        total = torch.zeros((), device=self.rt.device)
        global_batch = s.train.batch_size // s.train.grad_accum_steps  # one micro-step's windows
        batches = eval_batches(self.val_data, global_batch, s.train.eval_iters, self.rt.device, s.runtime.seed, self.rt.rank, self.rt.world_size)
        for x, y in batches:
            if self.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            with self.rt.autocast():
                total += self.loss_fn(x, y).float()
        self.wrapped.train()
        total = self.dist.all_reduce_mean(total / s.train.eval_iters)
        return float(total)

    # ------------------------------------------------------------------ loop
    def _agree_stop(self) -> bool:
        """Whether to stop after this step. Several ranks must stop at the same step (or the
        others would wait forever in the next all-reduce), so they vote at log intervals."""
        local = self.stops.reason_now(self.sinks.output_lost, self.sinks.event) is not None
        if not self.dist.active:
            self._stopped = local
            return local
        if self.step % self.settings.train.log_interval:
            return False
        self._stopped = self.dist.any(local)
        return self._stopped

    def _final_step(self) -> None:
        """Tell the sinks the step the run really reached, for their closing line: a failure or
        an abort can come between two log intervals."""
        self.sinks.log(self.step, {
            "tokens_seen": self.step * self.tokens_per_step,
            "elapsed_s": self.elapsed_before + time.time() - self._t_start,
        })

    def _nonfinite_stop(self, step: int, loss: float, grad_norm: float) -> None:
        report = {"step": step, "loss": loss, "grad_norm": grad_norm, "last_checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None}
        if self.rt.is_main:
            (self.run_dir / "nan_report.json").write_text(json.dumps(report, indent=2) + "\n")
        raise TrainingError(
            f"non-finite loss/gradient at or before step {step} (loss {loss}, grad norm {grad_norm}); "
            f"stopped without saving. Last good checkpoint: {self.last_checkpoint or 'none'}. "
            "Lower --learning-rate, raise --warmup-iters or use --on-nan skip"
        )

    def run(self) -> TrainResult:
        """Train from ``self.step`` to ``max_iters``, checkpointing along the way."""
        s, rt = self.settings, self.rt
        self._t_start = time.time()
        if rt.is_main:
            self._run_lock.acquire()  # already held, unless released since (or a second run())
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                # Before anything else is written: another run's files move aside, run.json says whose the rest are.
                self.run_record = rundir.open_run(self.run_dir, s.checkpoint.resume, self._resumed_identity, self.notice)
                atomic_write_bytes(self.run_dir / "settings.yaml", settings_to_yaml(s).encode())
            except BaseException:
                self.release_run_dir()
                raise
        record = self.run_record
        info = RunInfo(
            run_dir=self.run_dir, max_iters=s.train.max_iters, start_iter=self.step, resumed=self.step > 0,
            device=str(rt.device), dtype=rt.dtype_name, num_params=self.model.num_params(),
            tokens_per_step=self.tokens_per_step, settings=s.flat(), world_size=rt.world_size,
            wandb_run_id=self.wandb_run_id, run_id=record.run if record else None,
            segment=record.segment if record else 0,
        )
        self.sinks.start(info)
        self.wandb_run_id = self.sinks.run_id or self.wandb_run_id
        old_handlers = self.stops.install()
        status = "failed"
        try:
            self._loop()
            status = "interrupted" if self._stopped else "finished"
        except KeyboardInterrupt:
            status = "aborted"  # second Ctrl-C: no checkpoint for this step
            self._final_step()
            raise aborted(self.run_dir, self.step, self.last_checkpoint) from None
        except torch.cuda.OutOfMemoryError:
            self._final_step()
            raise oom_error(s, rt.world_size, self.step, self.last_checkpoint) from None
        except RuntimeError as e:  # includes torch.distributed.DistError
            self._final_step()
            if not self.dist.active:
                raise
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise TrainingError(
                f"rank {self.rt.rank}: lost contact with another process at step {self.step} (it crashed or was "
                f"killed; see its output): {first}. Last checkpoint: {self.last_checkpoint or 'none'}"
            ) from None
        except BaseException:
            self._final_step()
            raise
        finally:
            self.stops.restore(old_handlers)
            self.loader.close()
            self.sinks.close(status)
            self.release_run_dir()
        result = TrainResult(
            self.run_dir, status, self.step, self.step * self.tokens_per_step, self.last_train_loss,
            self.last_val_loss, self.best_val_loss, self.last_checkpoint, self.elapsed_before + time.time() - self._t_start,
        )
        if status == "interrupted":
            why = f" ({self.stops.reason})" if self.stops.reason else ""
            raise TrainingInterrupted(
                f"interrupted at step {self.step}{why}; checkpoint saved to {self.last_checkpoint}. "
                "Run the same command again to resume", exit_code=self.stops.exit_code(),
            )
        return result

    def _loop(self) -> None:
        s, rt = self.settings, self.rt
        accum = s.train.grad_accum_steps
        params = [p for p in self.model.parameters() if p.requires_grad]
        flops_per_token = self.model.flops_per_token()
        peak = rt.peak_flops()
        dev = rt.device
        loss_acc = torch.zeros((), device=dev)
        bad_acc = torch.zeros((), device=dev)
        grad_norm = torch.zeros((), device=dev)
        steps_in_window = 0
        t_window = t_first = time.time()
        first_step = rt.compile or self.cuda_graphs  # say how long compiling took (the first step of this process)
        stopping = False
        while self.step < s.train.max_iters and not stopping:
            step = self.step
            lr = schedule_lr(step, s.optim)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)  # Muon's groups: muon_lr / learning_rate
            step_loss = torch.zeros((), device=dev)
            for micro, (x, y) in enumerate(self.loader.step_batches(step)):
                if self.cuda_graphs:
                    # A new step: the previous replay's outputs (already read) may be overwritten.
                    torch.compiler.cudagraph_mark_step_begin()
                with self.dist.no_sync(self.wrapped, last=micro == accum - 1), rt.autocast():
                    loss = self.loss_fn(x, y) / accum
                loss.backward()
                step_loss += loss.detach()
            step_loss = self.dist.all_reduce_mean(step_loss)
            # grad_clip 0 turns clipping off; the norm is still measured for the dashboard.
            grad_norm = clip_gradients(self.optimizer, params, s.optim.grad_clip if s.optim.grad_clip > 0 else math.inf)
            grad_norm = self.dist.replicated(grad_norm)
            bad = ~(torch.isfinite(step_loss) & torch.isfinite(grad_norm))
            if s.train.on_nan == "skip" and bool(bad):  # the documented per-step sync of skip mode
                self.optimizer.zero_grad(set_to_none=True)
                self.skipped_steps += 1
                self.sinks.event(f"step {step}: non-finite loss or gradient; step skipped", "warning")
            else:
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            loss_acc += torch.nan_to_num(step_loss, nan=0.0, posinf=0.0, neginf=0.0)
            bad_acc += bad.float() if s.train.on_nan == "stop" else 0.0
            steps_in_window += 1
            self.step = step + 1
            if first_step:
                first_step = False
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)  # once per run: the first step's true time, compile included
                self.sinks.event(
                    f"first step {time.time() - t_first:.1f} s (torch.compile{' block by block' if self.regional else ''}"
                    f"{' and CUDA graphs' if self.cuda_graphs else ''}; "
                    f"a second run on this machine reuses the compile cache); building the run took {self.build_s:.1f} s"
                )

            stopping = self._agree_stop()
            last = self.step == s.train.max_iters or stopping
            if self.step % s.train.log_interval == 0 or last:
                if float(bad_acc) > 0:  # one read per log interval, not per step
                    self._nonfinite_stop(self.step, float(step_loss), float(grad_norm))
                dt = time.time() - t_window
                self.last_train_loss = float(loss_acc) / steps_in_window
                tok_s = steps_in_window * self.tokens_per_step / max(dt, 1e-9)
                metrics = {
                    "loss": self.last_train_loss, "lr": lr, "grad_norm": float(grad_norm), "tokens_per_s": tok_s,
                    "step_ms": 1000 * dt / steps_in_window, "tokens_seen": self.step * self.tokens_per_step,
                    "elapsed_s": self.elapsed_before + time.time() - self._t_start, "skipped_steps": self.skipped_steps,
                }
                if self.train_data.mixture.is_mixture:
                    metrics["tokens_by_source"] = dict(self.loader.tokens_by_source)
                if peak:
                    metrics["mfu"] = flops_per_token * tok_s / (peak * rt.world_size)
                if dev.type == "cuda":
                    metrics["gpu_mem_gb"] = torch.cuda.max_memory_allocated(dev) / 2**30
                self.sinks.log(self.step, metrics)
                loss_acc.zero_()
                steps_in_window = 0
                t_window = time.time()
            if self.step % s.train.eval_interval == 0 or last:
                t_eval = time.time()
                val = self.evaluate()  # a float: the device has finished when it returns
                if val is not None:
                    self.last_val_loss = val
                    if math.isfinite(val) and (self.best_val_loss is None or val < self.best_val_loss):
                        self.best_val_loss = val
                    self.sinks.log(self.step, {"val_loss": val, "best_val_loss": self.best_val_loss, "eval_s": time.time() - t_eval})
                t_window = time.time()  # keep eval time out of tokens/s
            if self.task_eval is not None and (self.step % (s.train.eval_tasks_interval or s.train.eval_interval) == 0 or last):
                # Rank 0 only (the others wait at their next all-reduce); the model unwrapped, as trained.
                self.sinks.log(self.step, self.task_eval(self.model, rt.autocast_dtype))
                t_window = time.time()
            if self.step % s.checkpoint.checkpoint_interval == 0 or last:
                if float(bad_acc) > 0:
                    self._nonfinite_stop(self.step, float(step_loss), float(grad_norm))
                self.save()
                t_window = time.time()
