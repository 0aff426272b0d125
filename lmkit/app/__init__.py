"""The application layer: what a user does with a trained model, over the library below.

``inference`` (load a checkpoint with its tokenizer, stream text), ``evaluation`` (a full
deterministic pass over held-out tokens), ``inspection`` (summaries and validation of checkpoint
files), ``export`` (safetensors and HuggingFace folders) and ``demo`` (the built-in dataset of
``lmkit train --demo``). ``lmkit.api`` is the face of this layer: the CLI and notebooks call it.
"""
