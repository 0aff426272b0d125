"""``python -m lmkit.harness ...``: the lm-eval command line, with ``--model lmkit`` registered."""

from lmkit.harness.cli import main

main()
