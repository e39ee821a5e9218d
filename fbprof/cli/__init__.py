"""The ``fbprof`` command line: thin typer commands over library functions.

Each command lives in a module of this package with ``register(app)``; :data:`COMMANDS` names the module
of every top-level command, and a module is imported only when its command runs (``fbprof --help``
imports neither numpy, torch nor a runtime). One error boundary (:class:`_LazyGroup.invoke`) turns
fbprof's exceptions into a message on stderr and an exit code; it applies to every command, under
CliRunner too.
"""

from __future__ import annotations

import importlib
import sys

import click
import typer
import typer.main
from typer.core import TyperGroup

from fbprof.cli.jsonout import JSON_FLAG
from fbprof.errors import FbprofError

#: key in ctx.meta: -1 quiet, 0 normal, 1 verbose (the root -q/-v; a command's own -q/-v wins)
VERBOSITY = "fbprof.verbosity"

__all__ = ["app", "main", "COMMANDS", "versions", "VERBOSITY"]

#: top-level command -> (module in fbprof.cli, one line for ``fbprof --help``)
COMMANDS: dict[str, tuple[str, str]] = {
    "measure": ("measure", "Measure every op of a search space on a device and write (or extend) its LUT CSV."),
    "predict": ("arch", "Predicted latency of architectures from a LUT (total and per layer)."),
    "arch": ("arch", "Architectures and search spaces."),
    "lut": ("lut", "Inspect, validate and compare LUT files."),
    "devices": ("devices", "List device profiles with their transport, backend and threads."),
    "export": ("export", "Export a whole architecture to a deployment format, checked against torch."),
    "verify": ("verify", "Measure random whole networks end to end and compare them with the LUT's predictions."),
    "search": ("search", "FBNet differentiable architecture search with a device LUT in the loss."),
    "companion": ("companion", "The companion protocol: serve it, or ask a companion."),
}


class _LazyGroup(TyperGroup):
    """Lists commands from :data:`COMMANDS`; imports a command's module only to run (or explain) it."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(f"fbprof.cli.{COMMANDS[name][0]}")
        sub = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
        module.register(sub)
        return typer.main.get_group(sub).get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, text) for name, (_, text) in COMMANDS.items()])

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # --json anywhere on the command line (before a "--") makes errors JSON too, even a usage error that
        # click raises before the command's own --json option is read
        ctx.meta[JSON_FLAG] = "--json" in (args[: args.index("--")] if "--" in args else args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        as_json = ctx.meta.get(JSON_FLAG, False)
        try:
            return super().invoke(ctx)
        except FbprofError as e:
            if as_json:
                _json_error(type(e).__name__, e.message, e.exit_code, e.hint, getattr(e, "problems", None),
                            getattr(e, "missing", None))
            else:
                click.echo(f"error: {e}", err=True)
            raise typer.Exit(e.exit_code) from None
        except _CLICK_ERRORS as e:
            if not as_json:
                raise
            _json_error(type(e).__name__, e.format_message(), e.exit_code)
            raise typer.Exit(e.exit_code) from None
        except OSError as e:  # a file-system problem fbprof did not name itself: still a message
            where = e.filename or "a file"
            if as_json:
                _json_error(type(e).__name__, f"{where}: {e.strerror or e}", 1)
            else:
                click.echo(f"error: {where}: {e.strerror or e}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            msg = "interrupted: finished rows are saved; run the same command again to resume"
            if as_json:
                _json_error("KeyboardInterrupt", msg, 130)
            else:
                click.echo(msg, err=True)
            raise typer.Exit(130) from None


#: usage errors: click's, and those of the click copy typer may bundle (typer._click)
_CLICK_ERRORS = tuple({click.ClickException, getattr(getattr(getattr(typer, "_click", None), "exceptions", None),
                                                     "ClickException", click.ClickException)})


def _json_error(kind: str, message: str, exit_code: int, hint: str | None = None, problems=None, missing=None) -> None:
    import json

    from fbprof.cli.jsonout import error_document

    click.echo(json.dumps(error_document(kind, message, exit_code, hint, problems, missing), indent=1,
                          ensure_ascii=False))


app = typer.Typer(
    cls=_LazyGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Measure operator latency on devices (LUTs) and search latency-aware networks (FBNet).",
)


def versions() -> list[tuple[str, str]]:
    """(name, version) of fbprof, Python and each backend's runtime, read from package metadata (no runtime is
    imported)."""
    import platform

    from fbprof import __version__
    from fbprof.backends import BACKENDS
    from fbprof.backends.base import dist_version

    out = [("fbprof", __version__), ("python", platform.python_version())]
    for b in BACKENDS.values():
        out.append((f"{b.name} ({b.runtime_module})", dist_version(b.runtime_module.split(".")[0])))
    return out


def _print_version(value: bool) -> None:
    if not value:
        return
    rows = versions()
    width = max(len(n) for n, _ in rows)
    for name, version in rows:
        click.echo(f"{name:<{width}}  {version}")
    raise typer.Exit(0)


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print fbprof's version and each runtime's, then exit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Every command: results and errors only (no progress, "
                               "no notes or warnings)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Every command: also per-row detail (each retry, "
                                 "note and unstable row)."),
) -> None:
    """Measure operator latency on devices (LUTs) and search latency-aware networks (FBNet)."""
    if quiet and verbose:
        raise click.UsageError("--quiet and --verbose exclude each other")
    ctx.meta[VERBOSITY] = -1 if quiet else (1 if verbose else 0)


def main() -> None:
    app(prog_name="fbprof")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
