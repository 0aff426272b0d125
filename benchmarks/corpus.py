"""A real text corpus of a chosen size, built from files already on the machine (nothing downloaded).

Benchmarks need hundreds of MB of real text. Every machine lmkit runs on has Python's standard
library and installed packages: source files, docs and licences written by many people, with the
vocabulary spread of a real code/prose mix. This module collects them in a fixed order (sorted
paths under each root) and writes them as JSON Lines documents (one file per document) or as
plain text, so a benchmark can state exactly what it measured.

    uv run python benchmarks/corpus.py --out /tmp/corpus --mb 200 --format jsonl
"""

from __future__ import annotations

import argparse
import json
import site
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

SUFFIXES = {".py", ".pyi", ".txt", ".md", ".rst", ".c", ".h", ".cpp", ".cu", ".html", ".json", ".toml", ".cfg"}
MAX_FILE = 4 << 20  # skip generated giants (vendored data blobs) that would dominate the mix


def roots() -> list[Path]:
    """Where text lives: the standard library, site-packages, and /usr/share/doc if present."""
    found = [Path(sysconfig.get_paths()["stdlib"])]
    found += [Path(p) for p in site.getsitepackages() if Path(p).is_dir()]
    found += [Path(p) for p in ("/usr/share/doc", "/usr/include", "/usr/lib/python3/dist-packages") if Path(p).is_dir()]
    seen, unique = set(), []
    for r in found:
        r = r.resolve()
        if r not in seen:
            seen.add(r)
            unique.append(r)
    return unique


def documents(min_bytes: int) -> Iterator[tuple[str, str]]:
    """``(path, text)`` of readable UTF-8 text files, in a fixed order, until ``min_bytes`` are given."""
    total = 0
    for root in roots():
        for p in sorted(root.rglob("*")):
            if p.suffix not in SUFFIXES or not p.is_file():
                continue
            try:
                if p.stat().st_size > MAX_FILE:
                    continue
                text = p.read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if not text.strip():
                continue
            yield str(p), text
            total += len(text.encode("utf-8"))
            if total >= min_bytes:
                return


def build(out: Path, mb: float, fmt: str = "jsonl", files: int = 8) -> list[Path]:
    """Write at least ``mb`` MB of text to ``out`` as ``files`` JSONL files or one ``corpus.txt``.

    Returns:
        The files written (reused when they exist with the same recipe: see ``out/recipe.json``).
    """
    out.mkdir(parents=True, exist_ok=True)
    recipe = {"mb": mb, "format": fmt, "files": files, "roots": [str(r) for r in roots()], "python": sys.version}
    stamp = out / "recipe.json"
    paths = [out / f"part-{i:03d}.jsonl" for i in range(files)] if fmt == "jsonl" else [out / "corpus.txt"]
    if stamp.is_file() and json.loads(stamp.read_text()) == recipe and all(p.is_file() for p in paths):
        return paths
    docs = list(documents(int(mb * 1e6)))
    if fmt == "jsonl":
        per = -(-len(docs) // files)
        for i, p in enumerate(paths):
            with open(p, "w", encoding="utf-8") as f:
                for src, text in docs[i * per:(i + 1) * per]:
                    f.write(json.dumps({"text": text, "meta": {"path": src}}, ensure_ascii=False) + "\n")
    else:
        with open(paths[0], "w", encoding="utf-8") as f:
            f.write("<|endoftext|>".join(text for _, text in docs))
    stamp.write_text(json.dumps(recipe))
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--mb", type=float, default=200)
    ap.add_argument("--format", choices=["jsonl", "txt"], default="jsonl")
    ap.add_argument("--files", type=int, default=8)
    args = ap.parse_args()
    paths = build(args.out, args.mb, args.format, args.files)
    size = sum(p.stat().st_size for p in paths)
    print(f"{len(paths)} files, {size / 1e6:.1f} MB on disk, in {args.out}")


if __name__ == "__main__":
    main()
