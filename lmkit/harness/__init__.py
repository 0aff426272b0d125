"""Downstream evaluation through EleutherAI's lm-evaluation-harness (the optional ``eval`` extra).

``evaluate_tasks`` is what ``lmkit eval --tasks`` runs; ``LmkitLM`` (in ``lmkit.harness.model``,
which imports ``lm_eval``) is the harness's model class, and ``register`` makes it
``--model lmkit``. Nothing here imports ``lm_eval`` until it is called.
"""

from lmkit.harness.register import INSTALL_HINT, MissingHarnessError, register, require_lm_eval
from lmkit.harness.run import TaskResults, TaskScore, evaluate_tasks

__all__ = ["INSTALL_HINT", "MissingHarnessError", "TaskResults", "TaskScore", "evaluate_tasks", "register", "require_lm_eval"]
