"""The ``lmkit`` command: root app, the one error boundary, and argv normalisation."""

from __future__ import annotations

import re
import sys
import traceback
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

try:  # typer >= 0.25 vendors click; older releases use click itself
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as click_exc

from lmkit import __version__
from lmkit.errors import LmkitError

_UNDERSCORE_FLAG = re.compile(r"^--[a-z][a-z0-9]*(_[a-z0-9]+)+(=|$)")


def normalize_args(args: list[str]) -> list[str]:
    """Accept ``--d_model`` as well as ``--d-model`` (the training guide uses underscores)."""
    out = []
    for a in args:
        m = _UNDERSCORE_FLAG.match(a)
        if m:
            name, eq, value = a.partition("=")
            a = name.replace("_", "-") + eq + value
        out.append(a)
    return out


def _err(message: str) -> None:
    # Diagnostics go to stderr so stdout stays clean for results (generated text, JSON).
    typer.echo(f"lmkit: error: {message}", err=True)


class LmkitGroup(TyperGroup):
    """Click group that renders user errors as one line (exit 2) and normalises flag spellings."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        args = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in args
        args = normalize_args([a for a in args if a != "--debug"])
        try:
            rv = super().main(args, prog_name or "lmkit", complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except LmkitError as e:
            if debug:
                traceback.print_exc()
            msg = (str(e).replace("\n", " ") if not getattr(e, "problems", None) or len(e.problems) == 1
                   else f"{len(e.problems)} problems:\n  " + "\n  ".join(e.problems))
            code = e.exit_code
            if code in (129, 130, 141, 143):  # a requested stop (SIGHUP, Ctrl-C, closed output, SIGTERM), not an error
                typer.echo(f"lmkit: {msg}", err=True)
            else:
                _err(msg)
        except click_exc.NoArgsIsHelpError as e:
            typer.echo(e.ctx.get_help())
            code = 0
        except (getattr(click_exc, "Abort", typer.Abort), typer.Abort):
            _err("interrupted")
            code = 130
        except click_exc.ClickException as e:
            ctx_name = getattr(getattr(e, "ctx", None), "command_path", "lmkit")
            _err(f"{e.format_message()} (see '{ctx_name} --help')")
            code = e.exit_code
        except KeyboardInterrupt:
            _err("interrupted")
            code = 130
        except OSError as e:
            # A file system problem (permissions, disk full) that no layer turned into an LmkitError.
            if debug:
                traceback.print_exc()
            where = f": {e.filename}" if e.filename else ""
            _err(f"{e.strerror or e}{where} (check the path and its permissions/free space)")
            code = 2
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=LmkitGroup,
    name="lmkit",
    help="Train small transformer language models from scratch: tokenize, train, generate, eval.\n\nExample: lmkit train --demo",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lmkit {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
) -> None:
    """lmkit: from raw text to a trained model you can sample from.

    Example: lmkit train --demo
    """


def _register() -> None:
    # Command modules attach themselves to `app`; imported here, not at the top, so
    # `lmkit --version` does not pay for torch.
    import importlib

    for mod in ("tokenize", "train", "generate", "eval", "ckpt", "plot"):
        try:
            importlib.import_module(f"lmkit.cli.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"lmkit.cli.{mod}":
                raise


_register()


def main() -> None:
    """Console-script entry point."""
    from lmkit.bytecode import allow_bytecode_once

    allow_bytecode_once()  # torch's .pyc, once, even under PYTHONDONTWRITEBYTECODE (see bytecode.py)
    app()
