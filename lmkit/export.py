"""Moved to ``lmkit.app.export`` (the application layer); this name keeps old imports working.

New code imports from ``lmkit.api`` or ``lmkit.app.export``.
"""

from lmkit.app.export import HF_NAMES, export_checkpoint, hf_config, hf_tokenizer_files, prepare_output, to_hf_names  # noqa: F401
