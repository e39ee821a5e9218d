"""`fbprof devices`: known device profiles."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fbprof.cli.common import console, json_option, quiet_option, verbose_option, verbosity


def devices(
    profiles: list[Path] = typer.Option([], "--profiles", help="extra device profile files or folders"),
    json_out: bool = json_option(),
    quiet: bool = quiet_option(),
    verbose: bool = verbose_option(),
) -> None:
    """List device profiles with their transport, backend and threads."""
    from fbprof.devices.profiles import load_profiles

    level = verbosity(quiet, verbose)
    if json_out:
        from fbprof.cli.jsonout import emit

        emit("devices", devices=[{"name": p.name, "transport": p.transport, "backend": p.backend, "threads": p.threads,
                                  "description": p.description} for p in load_profiles(profiles).values()])
        return

    t = Table("device", "transport", "backend", "threads", "description")
    for p in load_profiles(profiles).values():
        t.add_row(p.name, p.transport, p.backend, str(p.threads), p.description)
    console.print(t)
    if level >= 0:
        console.print("addresses: adb:SERIAL, adb:HOST:PORT (profile android), ios:HOST:PORT (profile ios); --profile picks another")


def register(app: typer.Typer) -> None:
    app.command("devices")(devices)
