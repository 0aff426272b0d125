"""Byte-level BPE: training (``train_bpe``), the ``Tokenizer``, and GPT-2 compatible files."""

from lmkit.tokenizer.tokenizer import Tokenizer

__all__ = ["Tokenizer"]
