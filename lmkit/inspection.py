"""Moved to ``lmkit.app.inspection`` (the application layer); this name keeps old imports working.

New code imports from ``lmkit.api`` or ``lmkit.app.inspection``.
"""

from lmkit.app.inspection import Check, CheckpointSummary, TensorInfo, ValidationReport, inspect_checkpoint, validate_checkpoint  # noqa: F401
