"""`fbprof companion`: the reference companion (the iPhone app's protocol in Python) and helpers."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Optional

import typer

from fbprof.cli.common import console, err_console, quiet_option, verbose_option, verbosity

companion_app = typer.Typer(no_args_is_help=True, help="The companion protocol: serve it, or ask a companion.")


@companion_app.command("serve")
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0: every interface)"),
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="port (0: any free port)"),
    token: Optional[str] = typer.Option(None, "--token", help="pairing token (default: a new random one)"),
    threads: int = typer.Option(1, "--threads", min=1, help="runtime threads"),
    max_upload_mb: float = typer.Option(64.0, "--max-upload-mb", min=0.001, help="largest zipped model accepted"),
    max_models: int = typer.Option(16, "--max-models", min=1, help="models stored at once"),
    max_runs: int = typer.Option(10_000, "--max-runs", min=1, help="largest max_runs of a run request"),
    store: Optional[Path] = typer.Option(None, "--store", help="folder for uploaded models (default: a temporary one)"),
    advertise: bool = typer.Option(False, "--advertise", help="announce _fbprof._tcp by Bonjour/mDNS (needs zeroconf)"),
    quiet: bool = quiet_option(),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="also log every request on stderr"),
) -> None:
    """Serve the companion protocol: Core ML through coremltools on macOS, ONNX with ONNX Runtime anywhere."""
    from fbprof.companion.protocol import Limits
    from fbprof.companion.phone_server import CompanionServer, advertise as announce, new_token

    limits = Limits(max_upload_bytes=int(max_upload_mb * (1 << 20)), max_models=max_models, max_runs=max_runs)
    tok = token or new_token()
    level = verbosity(quiet, verbose)
    log = (lambda line: err_console.print(line, markup=False, highlight=False)) if level > 0 else None
    with CompanionServer(tok, host, port, limits, threads=threads, log=log, store_dir=store) as server:
        formats = ", ".join(server.formats) or "nothing (install onnxruntime)"
        typer.echo(f"fbprof companion listening on {server.address} (protocol v1; runs {formats})")
        typer.echo(f"token: {tok}")
        if level >= 0:
            typer.echo(f"measure with: fbprof measure --device ios:{server.address} --token {tok}")
        stop = announce(server) if advertise else None
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            if level >= 0:
                err_console.print("companion stopped")
        finally:
            signal.signal(signal.SIGTERM, previous)
            if stop is not None:
                stop()


@companion_app.command("info")
def info(
    device: str = typer.Option(..., "--device", "-d", help="ios:HOST:PORT (or a companion profile name)"),
    token: Optional[str] = typer.Option(None, "--token", help="pairing token (default: $FBPROF_COMPANION_TOKEN)"),
    profiles: list[Path] = typer.Option([], "--profiles", help="extra device profile files or folders"),
    quiet: bool = quiet_option(),
    verbose: bool = verbose_option(),
) -> None:
    """Ask a companion who it is: model, OS, thermal state, runtimes and limits (checks the token)."""
    from fbprof.devices.profiles import load_profiles, open_device, resolve_device
    from fbprof.errors import InputError

    verbosity(quiet, verbose)  # the answer is the result: printed at every level
    prof, address = resolve_device(device, None, load_profiles(profiles))
    if prof.transport != "companion":
        raise InputError(f"{device!r} is not a companion device (transport {prof.transport})")
    opts = {"token": token} if token else {}
    with open_device(prof, address, opts) as dev:
        console.print_json(json.dumps(dev.info))  # type: ignore[attr-defined]


@companion_app.command("discover")
def discover(
    seconds: float = typer.Option(3.0, "--seconds", min=0.1, help="how long to listen"),
    quiet: bool = quiet_option(),
    verbose: bool = verbose_option(),
) -> None:
    """List companions announcing themselves by Bonjour/mDNS (_fbprof._tcp) on the local network."""
    from fbprof.devices.companion_client import discover as find

    level = verbosity(quiet, verbose)
    found = find(seconds)
    if not found and level >= 0:
        console.print("no companion found")
    for name, address in found:
        console.print(f"{name}  ios:{address}")


def register(app: typer.Typer) -> None:
    app.add_typer(companion_app, name="companion")
