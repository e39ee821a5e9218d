"""The ``fbprof`` command line: thin typer commands over library functions.

One error boundary (:class:`_Boundary`) turns fbprof's exceptions into a message on stderr and an
exit code; it applies to every command, under CliRunner too. Command modules register themselves
through ``register(app)``; they import heavy libraries (torch, runtimes) inside the command only.
"""

from __future__ import annotations

import importlib
import sys

import click
import typer
from typer.core import TyperGroup

from fbprof.errors import FbprofError

__all__ = ["app", "main"]

#: command modules, each with register(app: typer.Typer)
COMMAND_MODULES = ("measure", "lut", "arch", "devices", "export", "verify", "search", "companion")


class _Boundary(TyperGroup):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FbprofError as e:
            click.echo(f"error: {e}", err=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            click.echo("interrupted: finished rows are saved; run the same command again to resume", err=True)
            raise typer.Exit(130) from None


def _build() -> typer.Typer:
    a = typer.Typer(
        cls=_Boundary,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        help="Measure operator latency on devices (LUTs) and search latency-aware networks (FBNet).",
    )
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"fbprof.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"fbprof.cli.{name}":
                continue  # command not part of this build
            raise
        mod.register(a)
    return a


app = _build()


def main() -> None:
    app(prog_name="fbprof")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
