"""Moved to ``lmkit.app.inference`` (the application layer); this name keeps old imports working.

New code imports from ``lmkit.api`` or ``lmkit.app.inference``.
"""

from lmkit.app.inference import EOT, Piece, Trained, encode_prompt, find_tokenizer, generate_text, load_trained, settings_of, stream  # noqa: F401
from lmkit.training.checkpoint import checkpoint_file  # noqa: F401
