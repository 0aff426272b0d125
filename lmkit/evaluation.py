"""Moved to ``lmkit.app.evaluation`` (the application layer); this name keeps old imports working.

New code imports from ``lmkit.api`` or ``lmkit.app.evaluation``.
"""

from lmkit.app.evaluation import EvalResult, available_bytes, batch_bytes, check_token_ids, evaluate, evaluate_checkpoint  # noqa: F401
