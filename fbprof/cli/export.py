"""`fbprof export`: a whole architecture to a deployment format (ONNX, TorchScript, TFLite, ExecuTorch, CoreML)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fbprof.cli.common import console, err_console, parse_options, quiet_option, verbose_option, verbosity


def export(
    arch: str = typer.Argument(..., help="fbnet-a|fbnet-b|fbnet-c or an architecture file (.yaml/.json)"),
    fmt: str = typer.Option(..., "--format", "-f", help="onnx, torchscript, tflite, executorch (pte) or coreml (mlpackage)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="model file to write (default: <arch><suffix>)"),
    resolution: Optional[int] = typer.Option(None, "--resolution", "-r", help="input resolution (default: the space's)"),
    width: Optional[float] = typer.Option(None, "--width", "-w", help="width multiplier (default: the space's)"),
    option: list[str] = typer.Option([], "--option", help="exporter setting KEY=VALUE, e.g. precision=fp16 or target=iOS17 for CoreML"),
    check: bool = typer.Option(True, "--check/--no-check", help="run the file once with the local runtime and compare with torch"),
    quiet: bool = quiet_option(),
    verbose: bool = verbose_option(),
) -> None:
    """Export a whole architecture; the file is checked against torch with the format's local runtime."""
    from fbprof.backends import resolve_format
    from fbprof.profiler.export import export_arch_file
    from fbprof.space import load_arch

    opts: dict = parse_options(option)
    resolve_format(fmt)  # an unknown format fails before the architecture is built
    a = load_arch(arch, resolution, width)
    if verbosity(quiet, verbose) >= 0:
            err_console.print(f"exporting {a.name} ({a.space.resolution}px, width {a.space.width:g}, {a.macs() / 1e6:.1f}M MACs) to {fmt}...")
    r = export_arch_file(a, fmt, out, opts, check=check)
    dims = "x".join(map(str, r.input_shape))
    console.print(f"wrote {r.path} ({r.format}, {r.export_s:.1f} s); input {dims} float32 {r.layout.upper()}, "
                  f"output {'x'.join(map(str, r.output_shape))}")
    if r.check_problem:
        console.print(f"[red]check failed[/] ({r.backend}): {r.check_problem}")
        raise typer.Exit(1)
    if r.backend:
        console.print(f"checked with {r.backend}: output matches torch (max abs error {r.max_abs_error:.2g})")
    else:
        console.print(f"not run: {r.not_checked}")


def register(app: typer.Typer) -> None:
    app.command("export")(export)
