"""`fbprof measure`: build or extend a device's LUT for a search space."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fbprof.cli.common import (ProgressListener, err_console, json_option, parse_options, print_summary,
                               verbose_option, verbosity)


def measure(
    device: str = typer.Option("local", "--device", "-d", help="profile name (local, s8, iphonex) or adb:SERIAL, adb:HOST:PORT, ios:HOST:PORT"),
    backend: Optional[str] = typer.Option(None, "--backend", "-b", help="runtime: onnxruntime, torch, litert, executorch, coreml (default: the profile's)"),
    space: str = typer.Option("fbnet", "--space", "-s", help="packaged space name or a space .yaml/.json file"),
    resolution: Optional[int] = typer.Option(None, "--resolution", "-r", help="input resolution (default: the space's)"),
    width: Optional[float] = typer.Option(None, "--width", "-w", help="width multiplier (default: the space's)"),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", min=1, max=4096, help="runtime threads (default: the profile's, 1)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="LUT CSV to create or extend (default: <device>-<backend>.csv)"),
    remeasure: bool = typer.Option(False, "--remeasure", help="measure every op again, even those already in the LUT"),
    min_runs: int = typer.Option(50, "--min-runs", min=1, help="minimum timed samples per op"),
    min_time: float = typer.Option(0.25, "--min-time", min=0.0, help="minimum seconds of timed samples per op"),
    max_time: float = typer.Option(10.0, "--max-time", min=0.01, help="cap in seconds per op (hitting it before --min-runs makes the row invalid)"),
    warmup: int = typer.Option(3, "--warmup", min=0, help="warm-up runs per op"),
    workers: int = typer.Option(2, "--workers", min=1, help="parallel export processes"),
    paired: int = typer.Option(0, "--paired", min=0, help="local device: rows by sample-level pairing, N iterations "
                               "each timing every op once (its third call in a row), a row = the median of its N "
                               "calls; robust to a machine that drifts between fast and slow spells (header 'pairing')"),
    onnx_exporter: str = typer.Option("dynamo", "--onnx-exporter", help="ONNX: dynamo (default) or legacy (TorchScript-based, ~10x faster export, deprecated upstream)"),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="artifact cache (default: $FBPROF_CACHE_DIR/artifacts or ~/.cache/fbprof/artifacts)"),
    profile: Optional[str] = typer.Option(None, "--profile", help="device profile for an adb:/ios: address (default: android / ios)"),
    profiles: list[Path] = typer.Option([], "--profiles", help="extra device profile files or folders"),
    benchmark_binary: Optional[Path] = typer.Option(None, "--benchmark-binary", help="adb: TFLite benchmark_model binary to push"),
    runner: Optional[str] = typer.Option(None, "--runner", help="adb: benchmark_model (default for s8) or python"),
    token: Optional[str] = typer.Option(None, "--token", help="ios: pairing token shown by the companion app"),
    option: list[str] = typer.Option([], "--option", help="extra device setting KEY=VALUE (repeatable)"),
    heldout: int = typer.Option(0, "--heldout", min=0, help="channel spaces: measure N random off-grid ops instead of the grid (check them with `fbprof lut interp-check`)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
    verbose: bool = verbose_option(),
    json_out: bool = json_option(),
) -> None:
    """Measure every op of a search space on a device and write (or extend) its LUT CSV."""
    from fbprof.errors import InputError
    from fbprof.loop import LoopConfig
    from fbprof.profiler.measure import MeasureConfig, measure_lut, open_measure

    try:
        loop = LoopConfig(warmup_runs=warmup, min_runs=min_runs, min_time_s=min_time, max_time_s=max(max_time, min_time),
                          max_runs=max(10_000, min_runs))
    except ValueError as e:
        raise InputError(f"measuring options: {e}") from None
    opts: dict = parse_options(option)
    for k, v in (("benchmark_binary", benchmark_binary), ("runner", runner), ("token", token)):
        if v is not None:
            opts[k] = str(v)
    config = MeasureConfig(out=out, device=device, backend=backend, space=space, resolution=resolution, width=width,
                           heldout=heldout, threads=threads, loop=loop, remeasure=remeasure, paired=paired,
                           export_workers=workers, onnx_exporter=onnx_exporter, cache_dir=cache_dir, profile=profile,
                           profiles=list(profiles), options=opts)
    level = verbosity(quiet, verbose)
    listener = ProgressListener(quiet=level < 0, verbose=level > 0)
    # said even with -q: it changes what the LUT holds
    with open_measure(config, on_note=lambda m: err_console.print(f"[yellow]{m}")) as req:
        summary = measure_lut(req, listener)
    if json_out:
        from fbprof.cli.jsonout import emit

        c = summary.counts
        emit("measure", path=str(summary.path), valid=not summary.failed and c.get("invalid", 0) == 0,
             counts=dict(c), measured=summary.measured, reused=summary.reused, failed=dict(summary.failed),
             not_ok=[{"key": r.key, "status": r.status, "cv": r.stats.cv, "note": r.note} for r in listener.not_ok],
             retried=len(listener.retried), wall_s=round(summary.wall_s, 3), export_s=round(summary.export_s, 3),
             loop_s=round(summary.loop_s, 3), interrupted=summary.interrupted)
    else:
        print_summary(summary, listener, level)
    if summary.failed or summary.counts.get("invalid", 0):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("measure")(measure)
