"""Sampling and KV-cached, streaming generation."""

from lmkit.generation.generate import decode_n_tokens, decode_one_token, generate, prefill, slide_keep
from lmkit.generation.sampling import (
    INVALID_TOKEN,
    MIN_TEMPERATURE,
    NonFiniteLogitsError,
    check_sampling_args,
    effective_temperature,
    exponential_noise,
    logits_to_probs,
    sample,
)
from lmkit.generation.text_stream import Utf8StreamDecoder, stream_text

__all__ = [
    "INVALID_TOKEN",
    "MIN_TEMPERATURE",
    "NonFiniteLogitsError",
    "Utf8StreamDecoder",
    "check_sampling_args",
    "decode_n_tokens",
    "decode_one_token",
    "effective_temperature",
    "exponential_noise",
    "generate",
    "logits_to_probs",
    "prefill",
    "sample",
    "slide_keep",
    "stream_text",
]
