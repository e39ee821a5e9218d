"""`fbprof arch info` and `fbprof predict`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from fbprof.cli.common import console, err_console

arch_app = typer.Typer(no_args_is_help=True, help="Architectures and search spaces.")


@arch_app.command("info")
def info(
    arch: str = typer.Argument(..., help="fbnet-a|fbnet-b|fbnet-c or an architecture file"),
    resolution: Optional[int] = typer.Option(None, "--resolution", "-r"),
    width: Optional[float] = typer.Option(None, "--width", "-w"),
) -> None:
    """Per-layer shapes, MACs and params of an architecture."""
    from fbprof.space import load_arch

    a = load_arch(arch, resolution, width)
    t = Table("layer", "block", "input", "output", "stride", "MACs", "params", title=f"{a.name} ({a.space.name}, {a.space.resolution}px, width {a.space.width:g})")
    for name, s in a.ops():
        oh, ow = s.out_hw
        t.add_row(name, s.op, f"{s.cin}x{s.h}x{s.w}", f"{s.cout}x{oh}x{ow}", str(s.stride), f"{s.macs() / 1e6:.2f}M", f"{s.params() / 1e3:.1f}K")
    console.print(t)
    console.print(f"total: {a.macs() / 1e6:.1f}M MACs, {a.params() / 1e6:.2f}M params")


@arch_app.command("list")
def list_() -> None:
    """Packaged architectures and spaces."""
    from fbprof.space import arch_names, load_space, space_names

    console.print("architectures: " + ", ".join(arch_names()))
    for n in space_names():
        s = load_space(n)
        res = (f"resolutions {', '.join(map(str, s.resolutions))}" if getattr(s, "kind", "") == "channels"
               else f"resolution {s.resolution}")
        console.print(f"space {n}: {len(s.layers)} searched layers, {res}, {len(s.all_specs())} LUT ops")


def predict(
    archs: list[str] = typer.Argument(..., help="architecture names or files"),
    lut: Path = typer.Option(..., "--lut", "-l", help="LUT CSV"),
    layers: bool = typer.Option(False, "--layers", help="print the per-layer breakdown"),
) -> None:
    """Predicted latency of architectures from a LUT (total and per layer)."""
    from fbprof.lut.predict import predict as predict_arch
    from fbprof.lut.table import read_lut
    from fbprof.space import load_arch

    table = read_lut(lut)
    results = []
    for name in archs:
        a = load_arch(name)
        results.append((a, predict_arch(a, table)))
    for a, p in results:
        if layers or len(archs) == 1:
            t = Table("layer", "op", "µs", "share", "status", title=f"{a.name} on {table.header.get('device', '?')} / {table.header.get('backend', '?')}")
            for c in p.layers:
                share = c.latency_us / p.total_us * 100 if p.total_us else 0
                t.add_row(c.layer, c.key, f"{c.latency_us:.1f}", f"{share:.1f}%", c.status)
            console.print(t)
    s = Table("arch", "predicted ms", "calibrated ms", "MACs", "params", title=f"LUT {lut}")
    for a, p in results:
        s.add_row(a.name, f"{p.total_us / 1000:.3f}", "-" if p.calibrated_us is None else f"{p.calibrated_us / 1000:.3f}",
                  f"{a.macs() / 1e6:.1f}M", f"{a.params() / 1e6:.2f}M")
    console.print(s)
    for a, p in results:
        for w in p.warnings:
            err_console.print(f"[yellow]warning ({a.name}): {w}")


def register(app: typer.Typer) -> None:
    app.add_typer(arch_app, name="arch")
    app.command("predict")(predict)
