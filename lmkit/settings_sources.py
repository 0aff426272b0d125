"""Where each settings value came from, and problems rendered one line each, naming that source.

``resolve_settings`` (lmkit/settings.py) records an ``Origin`` per value as it merges the layers
(defaults < preset < YAML file < ``LMKIT_*`` environment < flags), so a refused value is blamed
on the flag, variable, file or preset that set it, not on the file it was merely merged over.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError


@dataclass(frozen=True)
class Origin:
    """Which layer set a value: named in the message when that value is refused.

    ``kind`` is default, preset, file, env or flag; ``where`` the preset, file, variable or flag;
    ``key`` the key as written; ``raw`` the value as given.
    """

    kind: str
    where: str = ""
    key: str = ""
    raw: Any = None

    def label(self) -> str:
        """Prefix of a problem with this one value: ``--seed``, ``LMKIT_SEED``, ``cfg.yaml: seed``."""
        if self.kind in ("env", "flag"):
            return self.where
        return f"{self.where}: {self.key}" if self.where else f"default {self.key}"

    def mention(self) -> str:
        """This value's source inside a problem with several: ``learning_rate in cfg.yaml``."""
        if self.kind in ("env", "flag"):
            return self.where
        return f"{self.key} in {self.where}" if self.where else f"{self.key} (default)"

    def shown(self) -> str:
        """The value as the user gave it (flags and variables without quotes)."""
        if self.kind in ("env", "flag") and isinstance(self.raw, str) and self.raw.strip() == self.raw and self.raw:
            return self.raw
        return repr(self.raw)


_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _message(e: Any) -> str:
    """pydantic's message as ``must be ...``, with the limit spelled out for bounds."""
    kind, ctx = e["type"], e.get("ctx") or {}
    if kind in _BOUNDS and ctx:
        limit = next(iter(ctx.values()))
        return f"must be {_BOUNDS[kind]} {f'{limit:g}' if isinstance(limit, float) else limit}"
    if kind in ("int_parsing", "int_parsing_size", "int_type"):
        return "must be a whole number"
    if kind == "finite_number":
        return "must be a finite number"
    return e["msg"].removeprefix("Value error, ").replace("Input should be", "must be", 1)


def format_validation_error(err: ValidationError, source: str = "settings",
                            origins: Mapping[tuple[str, str], Origin] | None = None) -> list[str]:
    """One line per problem, naming the source of each value at fault.

    With ``origins`` (from ``resolve_settings``): ``--seed: must be >= 0 (got -1)``,
    ``LMKIT_D_MODEL: ...``, ``cfg.yaml: d_model: ...``, and for a rule across fields
    ``--min-lr and learning_rate in cfg.yaml: min_lr (1.0) must not exceed ...``.
    Without: ``<source>: <section.field>: <message> (got <value>)``.
    """
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        msg = _message(e)
        fields = getattr((e.get("ctx") or {}).get("error"), "fields", ())
        if origins is not None and len(loc) >= 2 and (loc[0], loc[1]) in origins:
            origin = origins[(loc[0], loc[1])]
            got = "" if isinstance(origin.raw, Mapping) else f" (got {origin.shown()})"
            lines.append(f"{origin.label()}{'.'.join(['', *loc[2:]])}: {msg}{got}")
        elif origins is not None and len(loc) == 1 and fields:
            who = [origins.get((loc[0], f), Origin("default", key=f)).mention() for f in fields]
            lines.append(f"{' and '.join(dict.fromkeys(who))}: {msg}")
        elif origins is not None and not loc and fields:  # a rule across sections: fields are "section.field"
            who = [origins.get(tuple(f.split(".", 1)), Origin("default", key=f.split(".")[-1])).mention() for f in fields]
            lines.append(f"{' and '.join(dict.fromkeys(who))}: {msg}")
        else:
            got = e.get("input")
            shown = "" if isinstance(got, dict) or e["type"] == "missing" else f" (got {got!r})"
            lines.append(f"{source}: {'.'.join(loc) or 'settings'}: {msg}{shown}")
    return lines
