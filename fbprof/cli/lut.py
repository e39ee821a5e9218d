"""`fbprof lut show|validate|diff`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fbprof.cli.common import console

lut_app = typer.Typer(no_args_is_help=True, help="Inspect, validate and compare LUT files.")


@lut_app.command("validate")
def validate(files: list[Path] = typer.Argument(..., help="LUT CSV files")) -> None:
    """Check LUT files strictly; every problem is listed as path:line: reason."""
    from fbprof.lut.table import read_lut

    for f in files:
        lut = read_lut(f)
        lut.space_tags()
        grid = lut.grid()
        c = lut.counts()
        cells = f", grid of {len(grid)} cells" if grid else ""
        console.print(f"{f}: valid{cells}, {len(lut)} rows ({c['ok']} ok, {c['unstable']} unstable, {c['invalid']} invalid)")


@lut_app.command("show")
def show(
    file: Path = typer.Argument(..., help="LUT CSV"),
    sort: str = typer.Option("key", help="key or latency"),
    limit: int = typer.Option(0, help="show at most this many rows (0: all)"),
) -> None:
    """Print a LUT's header and rows."""
    from fbprof.lut.table import read_lut

    lut = read_lut(file)
    for k, v in lut.header.items():
        console.print(f"[dim]{k}:[/] {v}")
    rows = list(lut.rows.values())
    if sort == "latency":
        rows.sort(key=lambda r: -r.median_us)
    elif sort != "key":
        from fbprof.errors import InputError

        raise InputError(f"--sort {sort!r}: expected key or latency")
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
    limit: int = typer.Option(0, help="show only the N ops at each end (0: all)"),
) -> None:
    """Per-op latency ratio B/A over the common ops, sorted: which ops each device is faster at."""
    from fbprof.lut.predict import diff_luts
    from fbprof.lut.table import read_lut

    la, lb = read_lut(a), read_lut(b)
    d = diff_luts(la, lb)
    rows = d.rows
    if limit and len(rows) > 2 * limit:
        rows = rows[:limit] + rows[-limit:]
    t = Table("key", f"A µs ({a.name})", f"B µs ({b.name})", "B/A")
    for r in rows:
        t.add_row(r.key, f"{r.a_us:.1f}", f"{r.b_us:.1f}", f"{r.ratio:.2f}")
    console.print(t)
    if d.rows:
        import statistics

        ratios = [r.ratio for r in d.rows]
        faster_b = sum(1 for x in ratios if x < 1)
        console.print(f"{len(d.rows)} common ops: B faster on {faster_b}, A faster on {len(ratios) - faster_b}; "
                      f"median B/A {statistics.median(ratios):.2f} (range {min(ratios):.2f}..{max(ratios):.2f})")
    if d.only_a or d.only_b:
        console.print(f"only in A: {len(d.only_a)} ops, only in B: {len(d.only_b)} ops")


@lut_app.command("interp-check")
def interp_check(
    grid: Path = typer.Argument(..., help="grid LUT (built with `fbprof measure --space fbnetv2`)"),
    heldout: Path = typer.Argument(..., help="held-out LUT (built with `fbprof measure --space fbnetv2 --heldout N`)"),
) -> None:
    """Interpolation error of a grid LUT on held-out off-grid ops measured directly (MAPE)."""
    from fbprof.errors import InputError
    from fbprof.lut.interp import check_interpolation
    from fbprof.lut.table import read_lut

    g, h = read_lut(grid), read_lut(heldout)
    for name in ("device", "backend", "threads"):
        if g.header.get(name) != h.header.get(name):
            raise InputError(f"{grid} and {heldout} were measured differently ({name}: {g.header.get(name)!r} vs "
                             f"{h.header.get(name)!r})")
    check = check_interpolation(g, h)
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
