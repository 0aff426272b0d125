"""Sampling and KV-cached, streaming generation."""

from lmkit.generation.generate import decode_n_tokens, decode_one_token, generate, prefill
from lmkit.generation.sampling import (
    check_sampling_args,
    exponential_noise,
    logits_to_probs,
    sample,
)
from lmkit.generation.text_stream import Utf8StreamDecoder, stream_text

__all__ = [
    "Utf8StreamDecoder",
    "check_sampling_args",
    "decode_n_tokens",
    "decode_one_token",
    "exponential_noise",
    "generate",
    "logits_to_probs",
    "prefill",
    "sample",
    "stream_text",
]
