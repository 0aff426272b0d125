"""The value of ``train_data_path`` / ``val_data_path``: one path, or a weighted mixture of datasets.

Spellings (the same sources, weights normalised when sampling)::

    --train-data-path data/web.json                                  one dataset
    --train-data-path 'web=data/web.json:0.7,code=data/code.json:0.3'  a mixture (CLI, LMKIT_*)
    train_data_path:                                                 a mixture (YAML)
      - {name: web, path: data/web.json, weight: 0.7}
      - {name: code, path: data/code.json, weight: 0.3}

A string is a mixture when it holds a comma or ends in ``:NUMBER``; anything else is one path
(so a plain path never changes meaning). ``name=`` is optional: without it a source is named
after its file (``data/web.json`` -> ``web``), so metrics and checkpoints always carry names.

This module imports no numpy or torch: the settings tree validates it before anything loads.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# More sources than this is almost surely a glob pasted in the wrong place; each one also costs
# a line on the dashboard and a key in every metrics row.
MAX_SOURCES = 64
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
# `name=path:weight`: the name is a bare word before the first '=', the weight follows the last ':'.
_ITEM = re.compile(r"(?:(?P<name>[A-Za-z0-9_.-]+)=)?(?P<path>.*):(?P<weight>[^:/]*)")
_NUMBER_END = re.compile(r":\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")
SPELLING = "spell a mixture as 'name=path:weight,name=path:weight' (names optional, weights > 0)"


class DataSource(BaseModel):
    """One dataset of a mixture: its name in metrics, where it is, its share of the windows."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(description="Shown in metrics (tokens_by_source) and the dashboard.")
    path: Path = Field(description="A manifest, .bin, directory or glob, as for a single dataset.")
    weight: float = Field(description="Relative share of the training windows (normalised over the sources).")


def default_name(path: str | Path) -> str:
    """A source's name from its path: ``data/web.json`` -> ``web``, ``data/code/`` -> ``code``."""
    p = Path(str(path).rstrip("/"))
    name = p.name
    for suffix in (".json", ".bin", ".txt"):
        name = name.removesuffix(suffix)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")
    return name or "data"


def is_mixture_spelling(text: str) -> bool:
    """Whether a string is the ``name=path:weight,...`` spelling rather than one path."""
    return "," in text or bool(_NUMBER_END.search(text))


def _weight(raw: Any, where: str) -> float:
    if isinstance(raw, bool):
        raise ValueError(f"{where}: weight {raw!r} is not a number; {SPELLING}")  # noqa: TRY004 - pydantic reports ValueErrors
    try:
        w = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: weight {str(raw)!r} is not a number; {SPELLING}") from None
    if not math.isfinite(w) or w <= 0:
        raise ValueError(f"{where}: weight {raw} must be a finite number > 0 (to leave a source out, drop it)")
    return w


def parse_spelling(text: str) -> list[DataSource]:
    """``'web=a.json:0.7,code=b.json:0.3'`` as sources, each item checked on its own.

    Raises:
        ValueError: naming the item at fault and the spelling (pydantic renders it as one line
            under the flag, variable or YAML key that gave it).
    """
    items = [item.strip() for item in text.split(",")]
    out = []
    for k, item in enumerate(items, 1):
        where = f"source {k} ({item!r})" if item else f"source {k}"
        if not item:
            raise ValueError(f"{where} is empty (a stray comma?); {SPELLING}")
        m = _ITEM.fullmatch(item)
        if m is None or ":" not in item:
            raise ValueError(f"{where} has no ':weight'; {SPELLING}")
        path = m["path"].strip()
        if not path:
            raise ValueError(f"{where} has no path before ':{m['weight']}'; {SPELLING}")
        name = m["name"] or default_name(path)
        out.append(DataSource(name=name, path=Path(path), weight=_weight(m["weight"].strip(), where)))
    return out


def _from_mapping(entry: Mapping[str, Any], k: int) -> DataSource:
    where = f"source {k}"
    unknown = set(entry) - {"name", "path", "weight"}
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(map(str, unknown))}; each source is {{name, path, weight}}")
    path = entry.get("path")
    if not isinstance(path, (str, Path)) or not str(path).strip():
        raise ValueError(f"{where}: needs a 'path' (a manifest, .bin, directory or glob)")
    if "weight" not in entry:
        raise ValueError(f"{where} ({path}): needs a 'weight' > 0")
    name = entry.get("name")
    if name is None:
        name = default_name(path)
    return DataSource(name=str(name), path=Path(str(path)), weight=_weight(entry["weight"], f"{where} ({path})"))


def parse_data_path(value: Any) -> Any:
    """A settings value as ``Path`` (one dataset) or ``list[DataSource]`` (a mixture), checked.

    Strings in the mixture spelling, and YAML lists of ``{name, path, weight}`` (or of
    ``name=path:weight`` strings), become a list; other values pass through unchanged for the
    field's own validation (a plain string becomes a ``Path``, None stays None).

    Raises:
        ValueError: a malformed item, a weight that is not a finite number > 0, a name used twice
            or not a bare word, no sources, or more than ``MAX_SOURCES``.
    """
    if isinstance(value, str) and is_mixture_spelling(value):
        sources = parse_spelling(value)
    elif isinstance(value, (list, tuple)):
        sources = []
        for k, entry in enumerate(value, 1):
            if isinstance(entry, DataSource):
                sources.append(entry)
            elif isinstance(entry, Mapping):
                sources.append(_from_mapping(entry, k))
            elif isinstance(entry, str):
                sources += parse_spelling(entry)
            else:
                raise ValueError(f"source {k}: expected {{name, path, weight}} or 'name=path:weight', got {type(entry).__name__}")  # noqa: TRY004
    else:
        return value
    if not sources:
        raise ValueError(f"a mixture needs at least one source; {SPELLING}")
    if len(sources) > MAX_SOURCES:
        raise ValueError(f"{len(sources)} sources is more than {MAX_SOURCES}; combine datasets into fewer (a directory or glob is one source)")
    seen: set[str] = set()
    for s in sources:
        if not _NAME.fullmatch(s.name):
            raise ValueError(f"source name {s.name!r} must be letters, digits, '_', '.' or '-'")
        if s.name in seen:
            raise ValueError(f"source name {s.name!r} is used twice; give each source its own name=")
        seen.add(s.name)
    return sources


def describe(value: Path | list[DataSource]) -> str:
    """The resolved mixture in one line: ``web 70.0% (data/web.json), code 30.0% (data/code.json)``."""
    if not isinstance(value, list):
        return str(value)
    total = sum(s.weight for s in value)
    return ", ".join(f"{s.name} {100 * s.weight / total:.1f}% ({s.path})" for s in value)
