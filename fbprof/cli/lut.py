"""`fbprof lut show|validate|diff`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from fbprof.cli.common import console, json_option, plot_option, quiet_option, verbose_option, verbosity, write_plot

lut_app = typer.Typer(no_args_is_help=True, help="Inspect, validate and compare LUT files.")


@lut_app.command("validate")
def validate(
    files: list[Path] = typer.Argument(..., help="LUT CSV files"),
    json_out: bool = json_option(),
    quiet: bool = quiet_option(),
    verbose: bool = verbose_option(),
) -> None:
    """Check LUT files strictly; every problem is listed as path:line: reason."""
    from fbprof.lut.table import read_lut

    verbosity(quiet, verbose)
    if json_out:
        # every file is reported; the exit code is the first invalid file's (as without --json)
        from fbprof.cli.jsonout import emit
        from fbprof.errors import FileFormatError

        docs, first_error = [], None
        for f in files:
            try:
                lut = read_lut(f).validate()
            except FileFormatError as e:
                first_error = first_error or e
                docs.append({"path": str(f), "valid": False, "rows": 0, "counts": {}, "problems": list(e.problems)})
                continue
            docs.append({"path": str(f), "valid": True, "rows": len(lut), "counts": lut.counts(), "problems": []})
        emit("lut-validate", valid=first_error is None, files=docs)
        if first_error is not None:
            raise typer.Exit(first_error.exit_code)
        return
    for f in files:
        lut = read_lut(f).validate()
        grid = lut.grid()
        c = lut.counts()
        cells = f", grid of {len(grid)} cells" if grid else ""
        console.print(f"{f}: valid{cells}, {len(lut)} rows ({c['ok']} ok, {c['unstable']} unstable, {c['invalid']} invalid)")


@lut_app.command("show")
def show(
    file: Path = typer.Argument(..., help="LUT CSV"),
    sort: str = typer.Option("key", help="key or latency"),
    limit: int = typer.Option(0, min=0, help="show at most this many rows (0: all)"),
    json_out: bool = json_option(),
    plot: Optional[Path] = plot_option("heatmap of searched layer x candidate block, µs (the header's single space)"),
    quiet: bool = quiet_option(),
    verbose: bool = verbose_option(),
) -> None:
    """Print a LUT's header and rows."""
    from fbprof.lut.table import read_lut

    level = verbosity(quiet, verbose)
    lut = read_lut(file)
    rows = list(lut.rows.values())
    if sort == "latency":
        rows.sort(key=lambda r: -r.median_us)
    elif sort != "key":
        from fbprof.errors import InputError

        raise InputError(f"--sort {sort!r}: expected key or latency")
    if plot is not None:
        from fbprof.lut.plot import heatmap_png

        write_plot(plot, heatmap_png(lut, lut.space()), -1 if json_out else level)
    if json_out:
        from fbprof.cli.jsonout import emit

        emit("lut-show", path=str(file), header=dict(lut.header), counts=lut.counts(),
             rows=[_row_json(r) for r in rows[: limit or None]])
        return
    for k, v in lut.header.items():
        console.print(f"[dim]{k}:[/] {v}")
    t = Table("key", "status", "median µs", "p10", "p90", "cv", "n")
    for r in rows[: limit or None]:
        s = r.stats
        t.add_row(r.key, r.status, f"{s.median:.1f}", "" if s.p10 is None else f"{s.p10:.1f}",
                  "" if s.p90 is None else f"{s.p90:.1f}", f"{s.cv:.3f}", str(s.n))
    console.print(t)
    c = lut.counts()
    console.print(f"{len(lut)} rows: {c['ok']} ok, {c['unstable']} unstable, {c['invalid']} invalid")


@lut_app.command("diff")
def diff(
    a: Path = typer.Argument(..., help="first LUT (e.g. S8)"),
    b: Path = typer.Argument(..., help="second LUT (e.g. iPhone X)"),
    limit: int = typer.Option(0, min=0, help="show only the N ops at each end (0: all)"),
    json_out: bool = json_option(),
    plot: Optional[Path] = plot_option("per-op ratio B/A, grouped by stage and block, log scale"),
    quiet: bool = quiet_option(),
    verbose: bool = verbose_option(),
) -> None:
    """Per-op latency ratio B/A over the common ops, sorted: which ops each device is faster at."""
    from fbprof.lut.predict import diff_luts
    from fbprof.lut.table import read_lut

    level = verbosity(quiet, verbose)
    la, lb = read_lut(a), read_lut(b)
    d = diff_luts(la, lb)
    rows = d.rows
    if limit and len(rows) > 2 * limit:
        rows = rows[:limit] + rows[-limit:]
    if plot is not None:
        from fbprof.lut.plot import diff_png

        write_plot(plot, diff_png(d, _label(la, a), _label(lb, b)), -1 if json_out else level)
    summary = d.summary()
    if json_out:
        from fbprof.cli.jsonout import emit, finite, lut_id

        emit("lut-diff", a=lut_id(la), b=lut_id(lb),
             rows=[{"key": r.key, "a_us": r.a_us, "b_us": r.b_us, "ratio": finite(r.ratio)} for r in rows],
             only_a=d.only_a, only_b=d.only_b,
             summary={k: (finite(v) if isinstance(v, float) else v) for k, v in summary.items()})
        return
    t = Table("key", f"A µs ({a.name})", f"B µs ({b.name})", "B/A")
    for r in rows:
        t.add_row(r.key, f"{r.a_us:.1f}", f"{r.b_us:.1f}", f"{r.ratio:.2f}")
    console.print(t)
    if d.rows:
        console.print(f"{summary['common']} common ops: B faster on {summary['b_faster']}, A faster on "
                      f"{summary['a_faster']}; median B/A {summary['median_ratio']:.2f} "
                      f"(range {summary['min_ratio']:.2f}..{summary['max_ratio']:.2f})")
    if d.only_a or d.only_b:
        console.print(f"only in A: {len(d.only_a)} ops, only in B: {len(d.only_b)} ops")


def _label(lut, path: Path) -> str:
    """A short name for a LUT in a figure: device/runtime from its header, else the file name."""
    dev, be = lut.header.get("device", ""), lut.header.get("backend", "")
    return f"{dev}/{be}" if dev and be else path.stem


def _row_json(r) -> dict:
    s = r.stats
    return {"key": r.key, "status": r.status, "n": s.n, "repeats": s.repeats, "median_us": s.median, "p10_us": s.p10,
            "p90_us": s.p90, "mean_us": s.mean, "std_us": s.std, "cv": s.cv, "min_us": s.min, "max_us": s.max,
            "env": r.env, "note": r.note}


@lut_app.command("interp-check")
def interp_check(
    grid: Path = typer.Argument(..., help="grid LUT (built with `fbprof measure --space fbnetv2`)"),
    heldout: Path = typer.Argument(..., help="held-out LUT (built with `fbprof measure --space fbnetv2 --heldout N`)"),
    remeasure: bool = typer.Option(False, "--remeasure", help="measure the held-out ops and the grid rows their "
                                   "interpolation reads again, interleaved in the same rounds, on --device (cancels "
                                   "drift between the two LUTs' runs)"),
    device: str = typer.Option("local", "--device", "-d", help="with --remeasure: the device the LUTs were measured on"),
    rounds: int = typer.Option(3, "--rounds", min=1, help="with --remeasure: interleaved rounds"),
    seed: int = typer.Option(0, "--seed", help="with --remeasure: seed of the visiting order"),
    paired: int = typer.Option(0, "--paired", min=0, help="with --remeasure: sample-level pairing instead of rounds: N "
                               "iterations, each timing every op once (local device), medians of the N samples"),
    scheme: str = typer.Option("bilinear", "--interp", help="interpolation between grid points: bilinear (latency "
                               "bilinear in cin x cout, what predict and search use) or macs (the block's MACs times "
                               "bilinear latency per MAC)"),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="artifact cache (default: $FBPROF_CACHE_DIR/artifacts or ~/.cache/fbprof/artifacts)"),
    quiet: bool = quiet_option(),
) -> None:
    """Interpolation error of a grid LUT on held-out off-grid ops measured directly (MAPE)."""
    from fbprof.errors import InputError
    from fbprof.lut.interp import check_interpolation
    from fbprof.lut.table import IDENTITY_FIELDS, read_lut

    g, h = read_lut(grid), read_lut(heldout)
    # compared as stored, the rows must have been measured alike; measured again (--remeasure), the same device
    # and runtime settings suffice
    for name in ("device", "backend", "threads") if remeasure else IDENTITY_FIELDS:
        if g.header.get(name) != h.header.get(name):
            raise InputError(f"{grid} and {heldout} were measured differently ({name}: {g.header.get(name)!r} vs "
                             f"{h.header.get(name)!r})")
    from fbprof.lut.interp import SCHEMES

    if scheme not in SCHEMES:
        raise InputError(f"--interp must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    if paired and not remeasure:
        raise InputError("--paired measures again: use it with --remeasure")
    if remeasure:
        from fbprof.backends.cache import ArtifactCache
        from fbprof.cli.common import VerifyProgress
        from fbprof.devices.profiles import load_profiles, open_device, resolve_device
        from fbprof.verify.interp import interleaved_interp_check

        prof, address = resolve_device(device, None, load_profiles())
        listener = VerifyProgress(quiet)
        listener.progress.start()
        with open_device(prof, address, {}) as dev:
            dev.check_backend(g.header.get("backend", ""))
            try:
                check, _ = interleaved_interp_check(g, list(h.rows), dev, ArtifactCache(cache_dir), rounds=rounds,
                                                    seed=seed, listener=listener, paired=paired, scheme=scheme)
            finally:
                listener.stop()
        how = (f"{paired} paired iterations (every op timed once per iteration; medians of the samples)" if paired
               else f"{rounds} interleaved rounds (medians of the round medians)")
        console.print(f"held-out ops and the grid rows they read measured again on {device}: {how}")
    else:
        check = check_interpolation(g, h, scheme=scheme)
    t = Table("key", "measured µs", "interpolated µs", "error")
    for key, m, p in check.rows:
        t.add_row(key, f"{m:.1f}", f"{p:.1f}", f"{100 * (p - m) / m:+.1f}%" if m > 0 else "-")
    console.print(t)
    for key, why in check.skipped:
        console.print(f"[dim]skipped {key}: {why}")
    if not check.rows:
        raise InputError(f"{heldout}: no held-out row the grid of {grid} can answer")
    console.print(f"MAPE {check.mape:.2f}% over {len(check.rows)} held-out ops ({len(check.skipped)} skipped)")


def register(app: typer.Typer) -> None:
    app.add_typer(lut_app, name="lut")
