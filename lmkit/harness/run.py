"""``evaluate_tasks``: a checkpoint's scores on lm-evaluation-harness tasks, as ``lmkit eval --tasks`` runs it."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmkit.errors import ConfigError
from lmkit.harness.register import require_lm_eval


@dataclass(frozen=True)
class TaskScore:
    """One metric of one task."""

    task: str
    metric: str  # e.g. acc, acc_norm, bits_per_byte
    value: float
    stderr: float | None  # None where the harness gives none (perplexities, a single example)
    filter: str = "none"  # the harness's answer filter (``none`` for scored choices)


@dataclass
class TaskResults:
    """What ``evaluate_tasks`` measured."""

    scores: list[TaskScore]
    results: dict[str, Any]  # the harness's full results (what ``--output`` writes)
    examples: int  # documents evaluated, over all tasks
    seconds: float  # wall time of the evaluation, loading excluded
    output: Path | None = None
    tasks: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (what ``lmkit eval --tasks ... --json`` prints)."""
        return {"scores": [s.__dict__ for s in self.scores], "examples": self.examples, "seconds": self.seconds,
                "output": str(self.output) if self.output else None, "tasks": self.tasks}


def check_task_args(tasks: Sequence[str], limit: int | None, num_fewshot: int | None) -> list[str]:
    """Validate the task options before anything is loaded; returns the task names.

    Raises:
        ConfigError: no tasks, ``limit`` < 1 or ``num_fewshot`` < 0.
    """
    names = [t.strip() for t in tasks if t and t.strip()]
    if not names:
        raise ConfigError("--tasks: give at least one task, e.g. --tasks hellaswag,arc_easy")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1 (documents per task), got {limit}; leave it out to evaluate every document")
    if num_fewshot is not None and num_fewshot < 0:
        raise ConfigError(f"--num-fewshot must be >= 0, got {num_fewshot}")
    return names


def evaluate_tasks(
    checkpoint: Path | str,
    tasks: Sequence[str],
    *,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int | str = 32,
    include_path: Sequence[Path | str] = (),
    device: str = "auto",
    dtype: str = "auto",
    tokenizer_dir: Path | str | None = None,
    output: Path | str | None = None,
    seed: int = 0,
) -> TaskResults:
    """Score a checkpoint on harness tasks, offline (see ``lmkit.harness.tasks``).

    Args:
        checkpoint: checkpoint file or run directory.
        tasks: task, group or tag names (``hellaswag``, ``arc_easy``), or YAML task files.
        limit: evaluate at most this many documents per task (the first ones).
        num_fewshot: examples in each prompt (default: the task's own, else 0).
        batch_size: distinct inputs per forward pass, or ``auto``.
        include_path: directories of local YAML tasks.
        device: ``auto``, ``cuda`` or ``cpu``.
        dtype: compute dtype, ``auto`` (bfloat16 on CUDA), ``bfloat16`` or ``float32``.
        tokenizer_dir: use this tokenizer instead of the recorded one.
        output: write the harness's full results JSON here (atomically).
        seed: the harness's seeds (few-shot sampling, sampled generation).

    Returns:
        ``TaskResults``.

    Raises:
        ConfigError: lm-eval missing, no or unknown tasks, bad limit/num_fewshot/batch size.
        DataError: a task's data are not available offline.
        CheckpointError, TokenizerError: as ``lmkit.inference.load_trained``.
    """
    names = check_task_args(tasks, limit, num_fewshot)
    require_lm_eval()
    from lmkit.harness.model import LmkitLM
    from lmkit.harness.tasks import check_task_names, load_tasks, offline_hub, quiet_harness, task_manager

    with offline_hub(), quiet_harness():
        manager = task_manager(names, include_path)
        check_task_names(manager, names)
        loaded = load_tasks(manager, names)  # before the model: missing data fail in a second
        lm = LmkitLM(checkpoint, device=device, dtype=dtype, batch_size=batch_size, tokenizer=tokenizer_dir)
        result = run_loaded(lm, loaded, limit=limit, num_fewshot=num_fewshot, seed=seed)
    result.tasks = names
    result.results.setdefault("config", {}).update({"model": "lmkit", "model_args": f"checkpoint={lm.checkpoint}",
                                                    **lm.get_model_info(), "batch_size": lm.batch_size, "limit": limit,
                                                    "num_fewshot": num_fewshot, "fewshot_seed": seed})
    if output is not None:
        result.output = write_results(result.results, Path(output))
    return result


def run_loaded(lm: Any, loaded: dict[str, Any], *, limit: int | None = None, num_fewshot: int | None = None,
               seed: int = 0) -> TaskResults:
    """Evaluate ``lm`` on tasks already built by ``load_tasks`` (built once, run as often as wanted).

    Args:
        lm: an ``lm_eval`` model (``LmkitLM``, or the harness's ``HFLM`` for comparisons).
        loaded: from ``lmkit.harness.tasks.load_tasks``.
        limit, num_fewshot, seed: as for ``evaluate_tasks``.

    Returns:
        ``TaskResults`` (without ``output``).

    Standard errors of metrics that are not means (the harness bootstraps those) use 1,000
    resamples instead of the harness's 100,000: the same estimate, a little noisier, in a
    fraction of the time. Means (accuracies) get the closed-form error either way.
    """
    from lm_eval.evaluator import evaluate

    for task in loaded["tasks"].values():
        if num_fewshot is not None and task.get_config("num_fewshot") != 0:
            task.set_config(key="num_fewshot", value=num_fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=seed)
    start = time.perf_counter()
    results = evaluate(lm=lm, task_dict=loaded, limit=limit, log_samples=False, bootstrap_iters=1000)
    seconds = time.perf_counter() - start
    examples = sum(int(n.get("effective", 0)) for n in (results.get("n-samples") or {}).values())
    return TaskResults(scores_of(results), results, examples, seconds)


def scores_of(results: dict[str, Any]) -> list[TaskScore]:
    """The (task, metric, value, stderr) rows of the harness's results, tasks in its order.

    Example: ``{"results": {"arc_easy": {"acc,none": 0.5, "acc_stderr,none": 0.1}}}`` gives
    ``[TaskScore("arc_easy", "acc", 0.5, 0.1)]``.
    """
    rows = []
    for task, metrics in (results.get("results") or {}).items():
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if not filt or "_stderr" in metric or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            err = metrics.get(f"{metric}_stderr,{filt}")
            stderr = float(err) if isinstance(err, (int, float)) and math.isfinite(err) else None
            rows.append(TaskScore(task, metric, float(value), stderr, filt))
    return rows


def write_results(results: dict[str, Any], output: Path) -> Path:
    """Write the harness's results as JSON, atomically (temp file + rename).

    Raises:
        ConfigError: ``output`` is a directory or cannot be written.
    """
    from lm_eval.utils import handle_non_serializable

    from lmkit.data.tokens import atomic_write_bytes

    if output.is_dir():
        output = output / "results.json"
    text = json.dumps({k: v for k, v in results.items() if k != "samples"}, indent=2, default=handle_non_serializable)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(output, (text + "\n").encode())
    except OSError as e:
        raise ConfigError(f"--output {output}: cannot write the results ({e.strerror or e}); pick a writable path") from None
    return output
