"""Options shared by several commands, defined once.

``settings_flags`` turns fields of the settings tree into command-line flags, so the pydantic field
descriptions are the single source of help text and every field gets ``--name-with-dashes`` (the
group also accepts ``--name_with_underscores``, see ``app.normalize_args``).
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer

from lmkit.settings import SECTIONS

ConfigOpt = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", help="YAML settings file (flat keys like d_model, or sections). Flags override it."),
]


# Numbers and text travel as strings: the settings tree parses them, so its bounds, its
# whole-number spellings ("1e5") and its messages ("--seed: must be >= 0 (got -1)") apply to flags
# exactly as to YAML and LMKIT_* variables. The metavar still says what is expected.
_METAVARS = {int: "<int>", float: "<float>", str: "<text>", Path: "<path>"}


def _cli_type(annotation: Any) -> tuple[type, dict[str, Any]]:
    """The click-friendly type for a settings field, plus extra typer.Option kwargs."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is Literal or annotation is bool:
        return annotation, {}  # a choice (validated, listed, tab-completed) or an on/off flag
    if Path in args and len(args) > 1:
        return str, {"metavar": "<path|mixture>"}  # a data path, or name=path:weight,... (settings_mixture)
    return str, {"metavar": _METAVARS.get(annotation, "<value>")}


def _default_and_example(name: str, field: Any, typ: type) -> str:
    """``Default: 768. Example: --d-model 512`` for a settings field's help text."""
    dashed = name.replace("_", "-")
    default = "" if field.default is None else f"Default: {field.default}. "
    if typ is bool:
        return f"{default}Example: --{'no-' if field.default else ''}{dashed}"
    example = (field.examples or [field.default])[0]
    return f"{default}Example: --{dashed} {example}"


def settings_flags(*sections: str, exclude: tuple[str, ...] = ()):
    """Decorate a command so it accepts every field of the given settings sections as a flag.

    Args:
        sections: settings sections whose fields become flags.
        exclude: fields of those sections the command does not use, left out of its flags and help.

    The decorated function receives the flags that were given as ``overrides: dict[str, Any]``
    (flat names -> values; numbers as the strings typed; flags left out are absent), ready for
    ``resolve_settings``.
    """
    unknown = set(exclude) - {f for s in sections for f in SECTIONS[s].model_fields}
    if unknown:
        raise ValueError(f"settings_flags: exclude names no field of {sections}: {sorted(unknown)}")

    def decorate(fn):
        sig = inspect.signature(fn)
        annotations = {k: v for k, v in typing.get_type_hints(fn, include_extras=True).items() if k != "overrides"}
        # Resolved (not string) annotations, so typer sees each Annotated option declaration.
        params = [p.replace(annotation=annotations.get(p.name, p.annotation)) for p in sig.parameters.values() if p.name != "overrides"]
        names: list[str] = []
        for section in sections:
            for name, field in SECTIONS[section].model_fields.items():
                if name in exclude:
                    continue
                typ, extra = _cli_type(field.annotation)
                dashed = name.replace("_", "-")
                decl = f"--{dashed}/--no-{dashed}" if typ is bool else f"--{dashed}"
                help_text = f"{field.description} {_default_and_example(name, field, typ)}"
                option = typer.Option(decl, help=help_text, rich_help_panel=f"{section.title()} settings", show_default=False, **extra)
                annotations[name] = Annotated[Optional[typ], option]
                params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotations[name]))
                names.append(name)

        @functools.wraps(fn)
        def wrapper(**kwargs):
            overrides = {n: kwargs.pop(n) for n in names if kwargs.get(n) is not None}
            for n in names:
                kwargs.pop(n, None)
            return fn(**kwargs, overrides=overrides)

        wrapper.__signature__ = sig.replace(parameters=params)
        wrapper.__annotations__ = annotations
        del wrapper.__wrapped__  # typer must see the new signature, not the original
        return wrapper

    return decorate
