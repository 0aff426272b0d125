"""Harness tasks scored on the model being trained (``train.eval_tasks``), on rank 0.

The tasks (and their data) are built once, when training starts, so a task that cannot run
(unknown, data not available offline, lm-eval missing) stops the run before its first step
rather than at its first evaluation. Each evaluation then wraps the live model in ``LmkitLM``
(eval mode for its duration, autocast as in training) and returns flat metrics:
``tasks/<task>/<metric>``, plus ``tasks_s``, the seconds it took. The harness's progress bars
and notices (stderr) are swallowed meanwhile: they would scroll through the training display.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lmkit.errors import ConfigError
from lmkit.model import TransformerLM
from lmkit.tokenizer import Tokenizer

METRIC_PREFIX = "tasks/"


class TaskEvaluator:
    """Score ``names`` on a model in memory, as often as asked, from tasks built once.

    Args:
        names: task names (``train.eval_tasks``).
        include_path: directories of local YAML tasks.
        limit: documents per task (None: all).
        tokenizer: the run's tokenizer.
        batch_size: distinct inputs per forward pass.

    Raises:
        ConfigError: lm-eval missing, unknown tasks, a bad limit.
        DataError: a task's data are not available offline.
    """

    def __init__(self, names: Sequence[str], include_path: Sequence[Path | str], limit: int | None,
                 tokenizer: Tokenizer, batch_size: int = 32) -> None:
        from lmkit.harness.register import require_lm_eval
        from lmkit.harness.run import check_task_args

        self.names = check_task_args(names, limit, None)
        require_lm_eval()
        from lmkit.harness.tasks import check_task_names, load_tasks, offline_hub, quiet_harness, task_manager

        self.limit, self.tokenizer, self.batch_size = limit, tokenizer, batch_size
        with offline_hub(), quiet_harness(), contextlib.redirect_stderr(io.StringIO()):
            manager = task_manager(self.names, include_path)
            check_task_names(manager, self.names)
            self.loaded = load_tasks(manager, self.names)

    def __call__(self, model: TransformerLM, autocast_dtype: torch.dtype | None) -> dict[str, float]:
        """Scores of the tasks on ``model`` now, as ``{"tasks/<task>/<metric>": value, "tasks_s": s}``."""
        from lmkit.harness.model import LmkitLM
        from lmkit.harness.run import run_loaded
        from lmkit.harness.tasks import offline_hub, quiet_harness

        lm = LmkitLM.from_model(model, self.tokenizer, autocast_dtype=autocast_dtype, batch_size=self.batch_size)
        with offline_hub(), quiet_harness(), contextlib.redirect_stderr(io.StringIO()):
            result = run_loaded(lm, self.loaded, limit=self.limit)
        metrics: dict[str, float] = {f"{METRIC_PREFIX}{s.task}/{s.metric}": s.value for s in result.scores if s.filter == "none"}
        metrics.update({f"{METRIC_PREFIX}{s.task}/{s.metric}/{s.filter}": s.value for s in result.scores if s.filter != "none"})
        metrics["tasks_s"] = result.seconds
        return metrics


def task_evaluator_for(settings: Any, tokenizer_state: dict[str, Any], run_dir: Path, *, world_size: int,
                       parallel: str) -> TaskEvaluator | None:
    """The run's ``TaskEvaluator``, or None when ``train.eval_tasks`` is empty.

    Args:
        settings: the run's settings.
        tokenizer_state: the checkpoint's ``tokenizer`` record ({dir, hash, vocab_size}).
        run_dir: the run directory (a ``tokenizer/`` beside its checkpoints is also tried).
        world_size: processes in the run.
        parallel: ``ddp`` or ``fsdp``.

    Raises:
        ConfigError: FSDP over several processes (its forward needs every rank), no tokenizer.
    """
    t = settings.train
    if not t.eval_tasks:
        return None
    if parallel == "fsdp" and world_size > 1:
        raise ConfigError("eval_tasks: not with parallel=fsdp over several GPUs (rank 0 alone cannot run a sharded model); "
                          "use parallel=ddp, or score saved checkpoints with lmkit eval --tasks")
    from lmkit.inference import find_tokenizer

    state = {"tokenizer": tokenizer_state, "settings": settings.model_dump(mode="json"),
             "model_config": {"vocab_size": settings.model.vocab_size}}
    tok = find_tokenizer(state, run_dir / "latest.pt")
    if tok is None:
        raise ConfigError("eval_tasks: needs the tokenizer that encoded the training data, and the data record none "
                          "(or it moved); set tokenizer_dir, or leave eval_tasks empty")
    return TaskEvaluator(t.eval_tasks, t.eval_tasks_include_path, t.eval_tasks_limit, tok)
