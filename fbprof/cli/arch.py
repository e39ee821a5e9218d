"""`fbprof arch info` and `fbprof predict`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from fbprof.cli.common import console, err_console, json_option, plot_option, quiet_option, verbose_option, verbosity, write_plot

arch_app = typer.Typer(no_args_is_help=True, help="Architectures and search spaces.")


@arch_app.command("info")
def info(
    arch: str = typer.Argument(..., help="fbnet-a|fbnet-b|fbnet-c or an architecture file"),
    resolution: Optional[int] = typer.Option(None, "--resolution", "-r"),
    width: Optional[float] = typer.Option(None, "--width", "-w"),
    json_out: bool = json_option(),
    quiet: bool = quiet_option(),
    verbose: bool = verbose_option(),
) -> None:
    """Per-layer shapes, MACs and params of an architecture."""
    from fbprof.space import load_arch

    verbosity(quiet, verbose)
    a = load_arch(arch, resolution, width)
    if json_out:
        from fbprof.cli.jsonout import emit

        layers = []
        for name, s in a.ops():
            oh, ow = s.out_hw
            layers.append({"layer": name, "key": s.key, "block": s.op, "input": [s.cin, s.h, s.w],
                           "output": [s.cout, oh, ow], "stride": s.stride, "macs": s.macs(), "params": s.params()})
        emit("arch-info", arch={"name": a.name, "space": a.space.name, "resolution": a.space.resolution,
                                "width": a.space.width, "head_channels": a.head_channels, "blocks": list(a.blocks)},
             layers=layers, macs=a.macs(), params=a.params())
        return
    t = Table("layer", "block", "input", "output", "stride", "MACs", "params", title=f"{a.name} ({a.space.name}, {a.space.resolution}px, width {a.space.width:g})")
    for name, s in a.ops():
        oh, ow = s.out_hw
        t.add_row(name, s.op, f"{s.cin}x{s.h}x{s.w}", f"{s.cout}x{oh}x{ow}", str(s.stride), f"{s.macs() / 1e6:.2f}M", f"{s.params() / 1e3:.1f}K")
    console.print(t)
    console.print(f"total: {a.macs() / 1e6:.1f}M MACs, {a.params() / 1e6:.2f}M params")


@arch_app.command("list")
def list_(json_out: bool = json_option(), quiet: bool = quiet_option(), verbose: bool = verbose_option()) -> None:
    """Packaged architectures and spaces."""
    from fbprof.space import arch_names, load_space, space_names

    verbosity(quiet, verbose)
    if json_out:
        from fbprof.cli.jsonout import emit

        spaces = [load_space(n) for n in space_names()]
        emit("arch-list", archs=list(arch_names()),
             spaces=[{"name": n, "layers": len(s.layers), "resolution": s.resolution, "width": s.width,
                      "ops": len(s.all_specs())} for n, s in zip(space_names(), spaces)])
        return

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
    json_out: bool = json_option(),
    plot: Optional[Path] = plot_option("stacked per-layer bars, one per architecture"),
    quiet: bool = quiet_option(),
    verbose: bool = verbose_option(),
) -> None:
    """Predicted latency of architectures from a LUT (total and per layer)."""
    from fbprof.lut.predict import predict as predict_arch
    from fbprof.lut.predict import rows_not_ok
    from fbprof.lut.table import read_lut
    from fbprof.space import load_arch

    level = verbosity(quiet, verbose)
    table = read_lut(lut)
    results = []
    for name in archs:
        a = load_arch(name)
        results.append((a, predict_arch(a, table)))
    not_ok = rows_not_ok(results, table)
    if plot is not None:
        from fbprof.lut.plot import predictions_png

        write_plot(plot, predictions_png([(p, a.space) for a, p in results],
                                         f"{lut.name}: {table.header.get('device', '?')} / {table.header.get('runtime', '?')}"),
                   -1 if json_out else level)
    if json_out:
        from fbprof.cli.jsonout import emit, lut_id

        emit("predict", lut=lut_id(table),
             archs=[{"name": a.name, "space": a.space.name, "resolution": a.space.resolution, "width": a.space.width,
                     "total_us": p.total_us, "calibrated_us": p.calibrated_us, "macs": a.macs(), "params": a.params(),
                     "layers": [{"layer": c.layer, "key": c.key, "op": c.key.split(":", 1)[0], "latency_us": c.latency_us,
                                 "share": c.latency_us / p.total_us if p.total_us else 0.0, "status": c.status,
                                 "macs": c.macs} for c in p.layers]} for a, p in results],
             not_ok=not_ok)
        return
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
    if not_ok and level >= 0:
        # one summary, each row once (not once per architecture)
        users = {n for e in not_ok for n in e["archs"]}
        err_console.print(f"[yellow]warning: {len(not_ok)} LUT row{'s' if len(not_ok) != 1 else ''} these predictions "
                          f"use {'are' if len(not_ok) != 1 else 'is'} not ok (used by {', '.join(sorted(users))}); "
                          "their latencies are less certain" + ("" if level > 0 else " (-v lists them)"))
        if level > 0:
            for e in not_ok:
                err_console.print(f"  {e['key']}: {e['status']}" + (f", {e['note']}" if e["note"] else "")
                                  + f" (in {', '.join(e['archs'])})")


def register(app: typer.Typer) -> None:
    app.add_typer(arch_app, name="arch")
    app.command("predict")(predict)
