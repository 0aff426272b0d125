"""Shared fixtures: where the shared data lives, tiny settings for CPU tests."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The ../shared/data folder (real text and GPT-2 tokenizer files); skips when absent."""
    if not (SHARED_DATA / "tinyshakespeare.txt").is_file():
        pytest.skip(f"shared data not found at {SHARED_DATA} (tests that use real text need ../shared)")
    return SHARED_DATA
