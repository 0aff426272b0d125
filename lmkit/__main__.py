"""``python -m lmkit`` works like ``lmkit`` (and is what torchrun launches)."""

from lmkit.cli.app import main

if __name__ == "__main__":
    main()
