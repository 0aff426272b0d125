"""The ``lmkit`` command: root app, the one error boundary, and argv normalisation."""

from __future__ import annotations

import errno
import re
import sys
import textwrap
import traceback
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperCommand, TyperGroup

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


_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


class LmkitCommand(TyperCommand):
    """A command whose help reads at 80 columns and whose on/off flags also take a value.

    Help is click's plain layout, one section per settings panel: a long flag name gets a line of
    its own instead of being cut to fit a table column (rich's layout did that at 80 columns).
    ``--wandb false`` / ``--wandb=false`` mean ``--no-wandb``, as the settings' YAML and
    ``LMKIT_WANDB=false`` spell it.
    """

    def format_help(self, ctx: Any, formatter: Any) -> None:
        # The plain click layout (TyperCommand's rich one sizes columns by squeezing names).
        super(TyperCommand, self).format_help(ctx, formatter)

    def format_options(self, ctx: Any, formatter: Any) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            title = "Arguments" if param.param_type_name == "argument" else getattr(param, "rich_help_panel", None) or "Options"
            sections.setdefault(title, []).append(record)
        for title in sorted(sections, key=lambda t: (t != "Arguments", t != "Options")):  # others keep their order
            with formatter.section(title):
                _write_dl(formatter, sections[title])

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, self._flag_values(ctx, args))

    def _flag_values(self, ctx: Any, args: list[str]) -> list[str]:
        """``--flag true|false`` and ``--flag=true|false`` rewritten as the flag or its ``--no-`` form."""
        flags: dict[str, tuple[str, str | None, bool]] = {}
        for p in self.params:
            if p.param_type_name == "option" and getattr(p, "is_bool_flag", False):
                on, off = p.opts[0], (p.secondary_opts or [None])[0]
                flags.update({o: (on, off, False) for o in p.opts})
                flags.update({o: (on, off, True) for o in p.secondary_opts})
        # With positional arguments, `--json 1` could mean a file named 1: only `--json=1` is read.
        takes_next = not any(p.param_type_name == "argument" for p in self.params)
        out, i = [], 0
        while i < len(args):
            arg = args[i]
            i += 1
            if arg == "--":
                out += args[i - 1:]
                break
            name, eq, word = arg.partition("=")
            if name not in flags or not (eq or (takes_next and i < len(args) and args[i].lower() in _TRUE | _FALSE)):
                out.append(arg)
                continue
            if not eq:
                word, i = args[i], i + 1
            if word.lower() not in _TRUE | _FALSE:
                raise click_exc.UsageError(f"{name} takes no value or one of true/false (got {word!r})", ctx=ctx)
            on, off, negated = flags[name]
            value = (word.lower() in _TRUE) != negated
            if value or off is not None:
                out.append(on if value else off)  # a plain flag set to false is simply left out
        return out


def _write_dl(formatter: Any, rows: list[tuple[str, str]], col_max: int = 30, gap: int = 2) -> None:
    """click's definition list, except that wrapping never splits a word at a hyphen.

    click's wrapper breaks ``--wandb-entity`` into ``--wandb-`` / ``entity`` in the help text;
    a name too long for the first column gets its own line, as in click.
    """
    first_col = min(max(len(name) for name, _ in rows), col_max) + gap
    indent = formatter.current_indent
    width = max(formatter.width - first_col - indent, 20)
    for name, text in rows:
        lines = textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False) or [""]
        if len(name) <= first_col - gap:
            formatter.write(f"{'':>{indent}}{name:<{first_col}}{lines[0]}\n")
        else:
            formatter.write(f"{'':>{indent}}{name}\n{'':>{indent + first_col}}{lines[0]}\n")
        for line in lines[1:]:
            formatter.write(f"{'':>{indent + first_col}}{line}\n")


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
            msg = _render(e)
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
            _err(_os_error_line(e))
            code = 2
        except MemoryError as e:
            # Raised before anything is damaged (allocation fails, nothing written half-way).
            if debug:
                traceback.print_exc()
            _err(_memory_error_line(e))
            code = 2
        except RuntimeError as e:
            torch = sys.modules.get("torch")  # only a loaded torch can have raised its OOM error
            if torch is None or not isinstance(e, getattr(torch, "OutOfMemoryError", ())):
                raise
            if debug:
                traceback.print_exc()
            _err(_memory_error_line(e))
            code = 2
        if standalone_mode:
            sys.exit(code)
        return code


def _render(e: LmkitError) -> str:
    """The message: one line, or (several problems) a count line then one indented line each."""
    problems = getattr(e, "problems", None) or [str(e)]
    hint = getattr(e, "hint", None)
    if len(problems) == 1:
        return problems[0].replace("\n", " ") + (f" ({hint})" if hint else "")
    head = f"{len(problems)} problems" + (f" ({hint})" if hint else "")
    return head + ":\n  " + "\n  ".join(p.replace("\n", " ") for p in problems)


_OS_ADVICE = {
    errno.ENOSPC: "free some disk space or write somewhere else",
    errno.EDQUOT: "free some of your disk quota or write somewhere else",
    errno.EACCES: "check the permissions",
    errno.EPERM: "check the permissions",
    errno.EROFS: "write somewhere else",
    errno.ENOENT: "check the path",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.EMFILE: "raise the open-file limit (ulimit -n)",
}


def _os_error_line(e: OSError) -> str:
    """``<what went wrong>: <path(s)> (<what to do>)``, useful even when the error names no path."""
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    what = e.strerror or str(e) or type(e).__name__
    code = f" [{errno.errorcode[e.errno]}]" if isinstance(e.errno, int) and e.errno in errno.errorcode else ""
    where = f": {' -> '.join(paths)}" if paths else ""
    advice = _OS_ADVICE.get(e.errno, "check the path, its permissions and the free space")
    return f"{what}{code}{where} ({advice})"


def _memory_error_line(e: BaseException) -> str:
    """Out of memory, with the size the failed allocation asked for when the error says it."""
    detail = str(e).strip().splitlines()[0] if str(e).strip() else "an allocation failed"
    return (f"out of memory: {detail} (lower batch_size, context_length or the model size, "
            "or use a larger machine; rerun with --debug for the traceback)")


app = typer.Typer(
    cls=LmkitGroup,
    rich_markup_mode=None,
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
