"""`fbprof verify`: how well a LUT predicts whole networks, and a calibrated predictor."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fbprof.cli.common import (VerifyProgress, console, err_console, json_option, parse_options, verbose_option,
                               verbosity)


def _line(name: str, d: dict) -> str:
    if not d or not d.get("n"):
        return f"{name}: -"

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    return (f"{name}: n {d['n']}, MAPE {d['mape_pct']:.2f}%, RMSPE {d['rmspe_pct']:.2f}%, bias {d['bias_pct']:+.2f}%, "
            f"within ±5% {100 * d['within_5_pct']:.1f}%, within ±10% {100 * d['within_10_pct']:.1f}%, "
            f"τ {f(d.get('kendall_tau'), '.3f')}, ρ {f(d.get('spearman_rho'), '.3f')}")


def verify(
    lut: Path = typer.Option(..., "--lut", "-l", help="LUT CSV to verify"),
    device: str = typer.Option("local", "--device", "-d", help="device the LUT was measured on (profile name or address)"),
    backend: Optional[str] = typer.Option(None, "--backend", "-b", help="must match the LUT's backend (default: the LUT's)"),
    space: Optional[str] = typer.Option(None, "--space", "-s", help="space name or file (default: the LUT header's single space)"),
    resolution: Optional[int] = typer.Option(None, "--resolution", "-r", help="with --space: input resolution"),
    width: Optional[float] = typer.Option(None, "--width", "-w", help="with --space: width multiplier"),
    samples: Optional[int] = typer.Option(None, "--samples", "-n", min=0, help="random architectures (FBNet-A/B/C are added for "
                                          "the fbnet space; default 100, 0 with --arch; a grid LUT: drawn over what its grid covers)"),
    arch: list[str] = typer.Option([], "--arch", "-a", help="ARCH (name or file, repeatable): also measure this network "
                                   "(held out); for a grid LUT (fbnetv2 channel space) predicted by interpolation"),
    seed: int = typer.Option(0, "--seed", help="seed of the sampling, the split and the measuring order"),
    rounds: int = typer.Option(3, "--rounds", min=1, help="interleaved measuring rounds (an arch's latency: median of its round medians)"),
    noise_repeats: int = typer.Option(6, "--noise-repeats", min=0, help="replicas of the noise-floor network per round (0: none)"),
    calib_fraction: float = typer.Option(0.3, "--calib-fraction", help="share of the random archs used to fit the calibration"),
    calibrate: bool = typer.Option(True, "--calibrate/--no-calibrate", help="fit a calibration and store it in the LUT header "
                                   "(--no-calibrate: report the LUT's stored calibration, if any, on all archs)"),
    store: bool = typer.Option(True, "--store/--no-store", help="with --calibrate: write the calibration into the LUT"),
    published: bool = typer.Option(True, "--published/--no-published", help="add FBNet-A/B/C (fbnet space) as held-out networks"),
    min_runs: Optional[int] = typer.Option(None, "--min-runs", min=1, help="timed samples per measurement (default: the LUT's loop)"),
    min_time: Optional[float] = typer.Option(None, "--min-time", min=0.0, help="seconds of samples per measurement (default: the LUT's loop)"),
    workers: int = typer.Option(2, "--workers", min=1, help="parallel export processes"),
    export_only: bool = typer.Option(False, "--export-only", help="only export the networks (warm the cache), measure nothing"),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="artifact cache (default: $FBPROF_CACHE_DIR/artifacts or ~/.cache/fbprof/artifacts)"),
    out: Path = typer.Option(Path("verify"), "--out", "-o", help="report folder (verify.csv, summary.json, verify.png, COMMAND.txt)"),
    profiles: list[Path] = typer.Option([], "--profiles", help="extra device profile files or folders"),
    option: list[str] = typer.Option([], "--option", help="extra device setting KEY=VALUE (repeatable)"),
    breakdown: list[str] = typer.Option([], "--breakdown", help="ARCH (name or file, repeatable): per-layer in-context "
                                        "costs beside the LUT rows, measured from the network's prefixes, instead of "
                                        "random networks; writes breakdown.csv/.json/.png into --out"),
    breakdown_worst: int = typer.Option(0, "--breakdown-worst", min=0, help="with --breakdown mode: also the N held-out "
                                        "random networks the raw LUT sum missed most in --out/verify.csv (an earlier run)"),
    paired: int = typer.Option(0, "--paired", min=0, help="on the local device: N iterations of sample-level pairing "
                               "instead of loops (every network timed once per iteration, its third call in a row; "
                               "the iterations are cut into --rounds rounds; with --breakdown a layer's cost is the "
                               "median of its per-iteration prefix differences)"),
    same_run_rows: bool = typer.Option(False, "--same-run-rows", help="also measure the LUT rows the predictions read, "
                                       "interleaved with the networks, and report the prediction from those same-run "
                                       "rows beside the LUT's: what the LUT's method misses, without the device's drift "
                                       "since the LUT was built (reported as now/LUT)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
    verbose: bool = verbose_option(),
    json_out: bool = json_option(),
) -> None:
    """Measure random whole networks end to end and compare them with the LUT's predictions.

    With --breakdown ARCH: measure every prefix of ARCH (stem .. layer k) interleaved and set each layer's
    in-context cost (the difference of consecutive prefixes) beside its isolated LUT row."""
    from fbprof.errors import InputError
    from fbprof.fileio import atomic_write_text
    from fbprof.verify import VerifyConfig, open_verify, run_verify, write_report

    if samples is None:
        samples = 0 if arch else 100
    config = VerifyConfig(lut=lut, device=device, backend=backend, space=space, resolution=resolution, width=width,
                          samples=samples, seed=seed, rounds=rounds, paired=paired, noise_repeats=noise_repeats,
                          calib_fraction=calib_fraction, calibrate=calibrate, store=store, published=published,
                          archs=list(arch), min_runs=min_runs, min_time_s=min_time, export_workers=workers,
                          cache_dir=cache_dir, report_dir=out, profiles=list(profiles), options=parse_options(option),
                          same_run_rows=same_run_rows)
    if breakdown or breakdown_worst:
        if arch:
            raise InputError("--arch and --breakdown are separate modes: give the network to break down with --breakdown")
        if same_run_rows:
            raise InputError("--breakdown always measures the LUT rows beside the prefixes; leave out --same-run-rows")
        _breakdown(config, breakdown, breakdown_worst, quiet or json_out, json_out)
        return
    level = verbosity(quiet, verbose)
    listener = VerifyProgress(level < 0)
    with open_verify(config) as req:
        try:
            result = run_verify(req, listener, export_only=export_only)
        finally:
            listener.stop()
    cmd, given = req.command, req.archs
    if result is None:
        if json_out:
            from fbprof.cli.jsonout import emit

            emit("verify", summary={"export_only": True, "samples": samples}, files={}, failed={})
            return
        console.print(f"exported {samples} random + {len(given)} given + published networks into the cache; measure with "
                      "the same command without --export-only")
        return
    paths = write_report(result, out)
    atomic_write_text(Path(out) / "COMMAND.txt", cmd + "\n")
    s = result.summary
    if json_out:
        from fbprof.cli.jsonout import emit

        emit("verify", summary=s, files={k: str(v) for k, v in paths.items()}, failed=dict(result.failed))
        if result.failed:
            raise typer.Exit(1)
        return
    raw = "interpolated" if s.get("prediction", "").startswith("interpolated") else "raw"
    console.print(_line(f"{raw}, all", s["raw"]["all"]))
    console.print(_line(f"{raw}, held-out", s["raw"]["held_out"]))
    for n, g in s.get("given", {}).items():
        if g["measured_us"]:
            console.print(f"{n}: predicted {g['predicted_us'] / 1000:.3f} ms, measured {g['measured_us'] / 1000:.3f} ms "
                          f"({100 * (g['predicted_us'] - g['measured_us']) / g['measured_us']:+.1f}%)")
    sr = s.get("same_run_rows")
    if sr:
        d = sr.get("now_over_lut") or {}
        console.print(_line(f"{raw} from the {sr['rows']} LUT rows measured in this run, held-out", sr["raw"]["held_out"]))
        if d:
            console.print(f"those rows now / in the LUT: median {d['median']:.3f} (p10 {d['p10']:.3f}, p90 {d['p90']:.3f})")
        if sr["failed"]:
            err_console.print(f"[yellow]{len(sr['failed'])} LUT rows could not be measured beside the networks "
                              f"(summary.json same_run_rows.failed); the networks that read them have no same-run prediction")
    if s["calibrated"].get("held_out"):
        console.print(_line(f"calibrated ({s['calibrated']['source']}), held-out", s["calibrated"]["held_out"]))
        console.print(f"calibration: {s['calibrated']['formula']}")
    m = s["macs"]["held_out"]
    console.print(f"MACs as predictor, held-out: τ {m.get('kendall_tau')}, ρ {m.get('spearman_rho')}")
    nf = s.get("noise_floor") or {}
    if nf.get("spread_pct") is not None:
        console.print(f"noise floor ({nf['arch']}, {nf['replicas']} replicas): spread {nf['spread_pct']:.2f}%, "
                      f"CV {nf['cv_pct']:.2f}%: a perfect predictor would get {100 * nf['perfect_predictor_within_5_pct']:.1f}% "
                      f"within ±5%, {100 * nf['perfect_predictor_within_10_pct']:.1f}% within ±10%"
                      + (f", τ {nf['perfect_predictor_kendall_tau_held_out']:.3f}" if "perfect_predictor_kendall_tau_held_out" in nf else ""))
    g = s["goals_met"]
    console.print(f"goals ({g['judged_on']}): ±10% {g['within_10_pct']}, ±5% {g['within_5_pct']}, τ {g['kendall_tau']}")
    for n, why in sorted(result.failed.items()):
        err_console.print(f"[red]failed[/] {n}: {why}")
    console.print("wrote " + ", ".join(str(p) for p in paths.values()))
    if result.failed:
        raise typer.Exit(1)


def _breakdown(config, names, worst, quiet: bool, json_out: bool) -> None:
    from rich.table import Table

    from fbprof.verify.breakdown import open_breakdown, run_breakdown, write_breakdown_report

    listener = VerifyProgress(quiet)
    with open_breakdown(config, names, worst) as req:
        listener.progress.start()
        try:
            result = run_breakdown(req, listener)
        finally:
            listener.stop()
    cmd, lut = req.command, config.lut
    paths = write_breakdown_report(result, req, config.report_dir)
    failed = any(b.failed for b in result)
    if json_out:
        from fbprof.cli.jsonout import emit
        from fbprof.verify.breakdown import breakdown_summary

        layers = {b.arch.name: [{"index": c.index, "layer": c.layer, "key": c.key, "isolated_us": c.isolated_us,
                                 "isolated_now_us": c.isolated_now_us, "in_context_us": c.in_context_us,
                                 "ratio": c.ratio} for c in b.layers] for b in result}
        emit("verify-breakdown", summary={"command": cmd, "lut": str(lut), "archs": breakdown_summary(result),
                                          "layers": layers},
             files={k: str(v) for k, v in paths.items()},
             failed={f"{b.arch.name}/{n}": why for b in result for n, why in sorted(b.failed.items())})
        if failed:
            raise typer.Exit(1)
        return
    for b in result:
        t = Table("#", "layer", "op key", "LUT µs", "isolated µs", "in context µs", "ratio", title=b.arch.name)
        for c in b.layers:
            t.add_row(str(c.index), c.layer, c.key, f"{c.isolated_us:.1f}",
                      "-" if c.isolated_now_us is None else f"{c.isolated_now_us:.1f}",
                      "-" if c.in_context_us is None else f"{c.in_context_us:.1f}",
                      "-" if c.ratio is None else f"{c.ratio:.2f}")
        console.print(t)
        e2e = b.end_to_end_us
        if e2e:
            now = b.isolated_now_sum_us
            console.print(f"{b.arch.name}: end to end {e2e:.1f} µs; isolated LUT sum {b.isolated_sum_us:.1f} µs "
                          f"({100 * (b.isolated_sum_us - e2e) / e2e:+.1f}%)"
                          + ("" if now is None else f"; isolated sum this run {now:.1f} µs ({100 * (now - e2e) / e2e:+.1f}%)"))
        for n, why in sorted(b.failed.items()):
            err_console.print(f"[red]failed[/] {n}: {why}")
    console.print("wrote " + ", ".join(str(p) for p in paths.values()))
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)
