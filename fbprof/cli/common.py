"""Shared CLI pieces: the console, option helpers and the rich progress listener."""

from __future__ import annotations

import time

import click
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fbprof.devices.profiles import is_secret_option  # noqa: F401 - re-exported for the commands
from fbprof.profiler.measure import Listener, MeasureSummary

__all__ = ["console", "err_console", "ProgressListener", "VerifyProgress", "progress_bars", "print_summary", "parse_options",
           "is_secret_option", "quiet_option", "verbose_option", "json_option", "plot_option", "verbosity", "write_plot"]

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def parse_options(items: list[str], flag: str = "--option") -> dict[str, str]:
    """``KEY=VALUE`` strings (a repeatable CLI option) as a dict; a malformed one is an InputError."""
    from fbprof.errors import InputError

    out: dict[str, str] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise InputError(f"{flag} {item!r}: expected KEY=VALUE")
        out[k] = v
    return out


# -- options every command shares ------------------------------------------------------------------------
def quiet_option():
    return typer.Option(False, "--quiet", "-q", help="results and errors only: no progress, notes or warnings")


def verbose_option():
    return typer.Option(False, "--verbose", "-v", help="also per-row detail: each retry, note and unstable row")


def json_option():
    return typer.Option(False, "--json", help="print one JSON document on stdout (schema: docs/json-output.md)")


def plot_option(what: str):
    return typer.Option(None, "--plot", help=f"write a PNG: {what}")


def verbosity(quiet: bool = False, verbose: bool = False) -> int:
    """-1 quiet, 0 normal, 1 verbose: the command's own -q/-v, else the root's (``fbprof -q CMD``)."""
    if quiet and verbose:
        from fbprof.errors import InputError

        raise InputError("--quiet and --verbose exclude each other")
    if quiet:
        return -1
    if verbose:
        return 1
    ctx = _current_context()
    return ctx.find_root().meta.get("fbprof.verbosity", 0) if ctx is not None else 0


def _current_context():
    """The running command's context: typer may run on a click copy of its own (typer._click)."""
    try:
        from typer._click.globals import get_current_context
    except ImportError:  # a typer on plain click
        get_current_context = click.get_current_context
    return get_current_context(silent=True) or click.get_current_context(silent=True)


def write_plot(path, png: bytes, level: int) -> None:
    """Write a PNG atomically and say so on stderr (unless quiet)."""
    from fbprof.fileio import atomic_write_bytes

    atomic_write_bytes(path, png)
    if level >= 0:
        err_console.print(f"wrote {path}")


def progress_bars(quiet: bool) -> Progress:
    """The bars every long command shows on stderr: description, bar, done/total, elapsed, ETA, current item."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[current]}"),
        console=err_console, transient=False, disable=quiet,
    )


class ProgressListener(Listener):
    """Rich progress bars with ETA for export and measurement."""

    def __init__(self, label: str = "measuring", quiet: bool = False, verbose: bool = False) -> None:
        self.label = label
        self.quiet = quiet
        self.verbose = verbose and not quiet
        self.retried: dict[str, int] = {}  # key -> retries (shown once, in the summary)
        self.not_ok: list = []  # rows of this run that are not ok
        self.progress = progress_bars(quiet)
        self.export_task = None
        self.task = None
        self.t0 = time.perf_counter()

    def on_start(self, total: int, todo: int, reused: int) -> None:
        if not self.quiet:
            err_console.print(f"{total} ops needed: {reused} already in the LUT, {todo} to measure")
        self.progress.start()

    def on_export_start(self, count: int) -> None:
        if count:
            self.export_task = self.progress.add_task("exporting", total=count, current="")

    def on_export_done(self, key: str) -> None:
        if self.export_task is not None:
            self.progress.update(self.export_task, advance=1, current=key)

    def on_row_start(self, key: str, index: int, count: int) -> None:
        if self.task is None:
            self.task = self.progress.add_task(self.label, total=count, current="")
        self.progress.update(self.task, current=key)

    def on_iteration(self, index: int, count: int) -> None:
        if getattr(self, "pair_task", None) is None:
            self.pair_task = self.progress.add_task(f"{self.label} (paired iterations)", total=count, current="")
        self.progress.update(self.pair_task, completed=index + 1)

    def on_retry(self, key: str, attempt: int, cv: float) -> None:
        self.retried[key] = self.retried.get(key, 0) + 1
        if self.verbose:
            self.progress.console.print(f"[yellow]{key}: noisy (cv {cv:.2f}), measuring again after a pause")
        elif self.task is not None:  # the bar says it; the summary counts it
            self.progress.update(self.task, current=f"{key} (noisy, measuring again)")

    def on_row_done(self, row) -> None:
        if row.status != "ok":
            self.not_ok.append(row)
        if self.task is not None:
            self.progress.update(self.task, advance=1)

    def on_note(self, message: str) -> None:
        if not self.quiet:
            self.progress.console.print(f"[yellow]{message}")

    def on_finish(self, summary: MeasureSummary) -> None:
        self.progress.stop()


def print_summary(summary: MeasureSummary, listener: ProgressListener | None = None, level: int = 0) -> None:
    c = summary.counts
    valid = not summary.failed and c.get("invalid", 0) == 0
    verdict = "[green]VALID[/]" if valid else "[red]INVALID[/]"
    console.print(
        f"{verdict} {summary.path}: {c.get('ok', 0)} ok, {c.get('unstable', 0)} unstable, {c.get('invalid', 0)} invalid"
        f", {len(summary.failed)} failed; measured {summary.measured}, reused {summary.reused}; "
        f"{summary.wall_s:.1f} s wall ({summary.export_s:.1f} s export, {summary.loop_s:.1f} s in measuring loops)"
    )
    for key, why in sorted(summary.failed.items()):
        console.print(f"  [red]failed[/] {key}: {why}")
    if listener is None or level < 0:
        return
    if listener.retried:
        n = sum(listener.retried.values())
        console.print(f"  {len(listener.retried)} rows were noisy and measured again ({n} retries)"
                      + ("" if level > 0 else "; -v lists them"))
        if level > 0:
            for key, k in sorted(listener.retried.items()):
                console.print(f"    {key}: {k} retr{'y' if k == 1 else 'ies'}")
    if listener.not_ok:
        console.print(f"  [yellow]{len(listener.not_ok)} rows not ok[/] (predictions that use them are less "
                      "certain; `fbprof measure --remeasure` on a quieter machine):")
        for row in sorted(listener.not_ok, key=lambda r: r.key):
            console.print(f"    {row.key}: {row.status}, cv {row.stats.cv:.2f}" + (f" ({row.note})" if row.note else ""))


class VerifyProgress:
    """Rich bars with ETA for the export and the interleaved measuring rounds."""

    def __init__(self, quiet: bool) -> None:
        self.progress = progress_bars(quiet)
        self.quiet = quiet
        self.export_task = None
        self.measure_task = None

    def on_plan(self, plan) -> None:
        if not self.quiet:
            n_cal = sum(s == "calibration" for s in plan.splits.values())
            err_console.print(
                f"{len(plan.archs)} architectures of {plan.space.name}@{plan.space.resolution} "
                f"({n_cal} calibration, {len(plan.archs) - n_cal} held-out); backend {plan.backend}, "
                f"{plan.threads} thread(s); noise network: {plan.noise_arch or '-'}")
        self.progress.start()

    def on_export_start(self, count: int) -> None:
        self.export_task = self.progress.add_task("exporting", total=count, current="")

    def on_export_done(self, name: str) -> None:
        self.progress.update(self.export_task, advance=1, current=name)

    def on_measure_start(self, total: int) -> None:
        self.measure_task = self.progress.add_task("measuring", total=total, current="")

    def on_measure_done(self, name: str, round_index: int, median_us: float) -> None:
        self.progress.update(self.measure_task, advance=1, current=f"round {round_index + 1}: {name} {median_us / 1000:.2f} ms")

    def on_note(self, message: str) -> None:
        if not self.quiet:
            self.progress.console.print(f"[yellow]{message}")

    def stop(self) -> None:
        self.progress.stop()
