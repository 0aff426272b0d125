"""Byte-level BPE: training (``train_bpe``), the ``Tokenizer``, and GPT-2 compatible files."""

from lmkit.tokenizer.tokenizer import Tokenizer
from lmkit.tokenizer.train import train_bpe

__all__ = ["Tokenizer", "train_bpe"]
