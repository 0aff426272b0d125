"""The harness's own command line with ``--model lmkit`` registered (``python -m lmkit.harness``)."""

from __future__ import annotations

import sys

from lmkit.errors import LmkitError


def main(argv: list[str] | None = None) -> None:
    """Run ``lm_eval``'s CLI on ``argv`` (default: ``sys.argv[1:]``) after ``register()``.

    Example: ``python -m lmkit.harness --model lmkit --model_args checkpoint=runs/demo --tasks arc_easy``.
    An ``LmkitError`` (a bad checkpoint, a missing tokenizer) is one line on stderr and exit 2,
    as in ``lmkit``; the harness's own errors are its own.
    """
    from lmkit.harness.register import register

    try:
        register()
        from lm_eval.__main__ import cli_evaluate

        if argv is not None:
            sys.argv = [sys.argv[0], *argv]
        cli_evaluate()
    except LmkitError as e:
        print(f"lmkit: error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
