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

from fbprof.errors import FbprofError

__all__ = ["app", "main", "COMMANDS"]

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

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FbprofError as e:
            click.echo(f"error: {e}", err=True)
            raise typer.Exit(e.exit_code) from None
        except OSError as e:  # a file-system problem fbprof did not name itself: still a message
            where = e.filename or "a file"
            click.echo(f"error: {where}: {e.strerror or e}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            click.echo("interrupted: finished rows are saved; run the same command again to resume", err=True)
            raise typer.Exit(130) from None


app = typer.Typer(
    cls=_LazyGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Measure operator latency on devices (LUTs) and search latency-aware networks (FBNet).",
)


@app.callback()
def _root() -> None:
    """Measure operator latency on devices (LUTs) and search latency-aware networks (FBNet)."""


def main() -> None:
    app(prog_name="fbprof")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
