"""The errors lmkit raises for problems a user can fix.

Every error that reaches the CLI boundary as an ``LmkitError`` is printed as one line on stderr
(``lmkit: error: <message>``) with exit code 2; anything else is a bug and keeps its traceback.
Messages name the file or field at fault and say what to do.
"""

from __future__ import annotations


class LmkitError(Exception):
    """Base class: a problem with the user's input, files or environment, not a bug in lmkit."""

    exit_code = 2


class ConfigError(LmkitError):
    """Invalid settings: a bad value, an unknown key, an unreadable config file.

    Holds one line per problem so the CLI can list them all at once rather than one per run.
    """

    def __init__(self, problems: str | list[str], hint: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        # What to do about all of them; shown once, not counted as a problem.
        self.hint = hint
        super().__init__("; ".join(self.problems) + (f" ({hint})" if hint else ""))


class DataError(LmkitError):
    """Unusable data: missing or empty corpora, malformed token files, ids outside the vocabulary."""


class TokenizerError(LmkitError):
    """Unusable tokenizer files or a tokenizer that does not match the data/checkpoint."""


class CheckpointError(LmkitError):
    """A checkpoint that is missing, damaged, foreign, or incompatible with the settings."""


class TrainingError(LmkitError):
    """Training cannot go on: non-finite loss, out of memory, an unwritable checkpoint directory."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
