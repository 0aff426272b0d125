"""Byte-level BPE: training (``train_bpe``, ``train_and_save``), the ``Tokenizer``, and GPT-2 compatible files."""

from lmkit.tokenizer.tokenizer import Tokenizer
from lmkit.tokenizer.train import train_and_save, train_bpe

__all__ = ["Tokenizer", "train_and_save", "train_bpe"]
