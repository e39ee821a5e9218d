"""`fbprof search`: FBNet's latency-aware DNAS driven by a device LUT (a thin wrapper over fbprof.search)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fbprof.cli.common import console, err_console, json_option, quiet_option, verbose_option, verbosity
from fbprof.search.dnas import AUTO_W_STEPS, MIN_EPOCHS, SearchConfig, SearchListener  # torch-free

_D = SearchConfig  # the defaults live in one place: SearchConfig's fields

HELP = """Search an architecture with FBNet's DNAS, latencies read from a device LUT.

Defaults: the digits shipped with scikit-learn at a 32 px proxy resolution, batch {batch}, at least {epochs}
epochs of at least {steps} weight steps (the first half weights only), hard (one-path) Gumbel-softmax sampling; see docs/search.md for the
schedule and the expected wall time. Writes arch-best.yaml
and arch-sample-K.yaml (read by `fbprof arch info`, `fbprof predict`, `fbprof export`, `fbprof verify`),
theta_history.json, theta.png, summary.json and a checkpoint per epoch (--resume continues).
A grid LUT (`fbprof measure --space fbnetv2`) runs FBNetV2's DMaskingNAS instead: widths, blocks and input
resolution, e.g. `fbprof search --space fbnetv2 --lut luts/local-cpu-litert-fbnetv2.csv` (docs/search.md).
Multi-GPU: torchrun --nproc_per_node N $(which fbprof) search --device cuda ... (see docs/search.md).""".format(
    batch=_D.batch_size, epochs=MIN_EPOCHS, steps=_D.min_epoch_steps)


def search(
    lut: Path = typer.Option(..., "--lut", "-l", help="LUT CSV of the target device"),
    out: Path = typer.Option(Path("search-out"), "--out", "-o", help="output folder (architectures, history, checkpoint)"),
    space: Optional[str] = typer.Option(None, "--space", "-s", help="space name or file (default: the LUT header's)"),
    lut_resolution: Optional[int] = typer.Option(None, "--lut-resolution", help="resolution the LUT was measured at (default: the LUT header's)"),
    width: Optional[float] = typer.Option(None, "--width", "-w", help="width multiplier (default: the LUT header's)"),
    head_channels: Optional[int] = typer.Option(None, "--head-channels", help="head width (default: the space's first)"),
    data: str = typer.Option("digits", "--data", help="'digits' (scikit-learn, offline), an ImageFolder directory, or a directory with train/ and test/ ImageFolders (test/ = held out)"),
    limit_per_class: Optional[int] = typer.Option(None, "--limit-per-class", min=1, help="use the first N training images of every class (quick runs)"),
    resolution: int = typer.Option(_D.resolution, "--resolution", "-r", min=8, help="proxy training resolution (strides adapted, see docs)"),
    min_feature: int = typer.Option(_D.min_feature, "--min-feature", min=1, help="smallest final feature map of the proxy network"),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e", min=1, help=f"default: at least {MIN_EPOCHS}, and enough for {AUTO_W_STEPS} weight steps (an epoch is at least --min-epoch-steps weight steps)"),
    warmup_epochs: Optional[int] = typer.Option(None, "--warmup-epochs", min=0, help="epochs training the weights only (default: half the epochs)"),
    batch_size: int = typer.Option(_D.batch_size, "--batch-size", "-b", min=2),
    w_lr: float = typer.Option(_D.w_lr, "--lr", help="SGD learning rate of the weights (1 epoch warm-up, then cosine)"),
    theta_lr: float = typer.Option(_D.theta_lr, "--theta-lr", help="Adam learning rate of the architecture parameters"),
    tau0: float = typer.Option(_D.tau0, "--tau0", help="initial Gumbel-softmax temperature"),
    tau_decay: float = typer.Option(_D.tau_decay, "--tau-decay", help="tau is multiplied by exp(-tau_decay) every epoch"),
    alpha: float = typer.Option(_D.alpha, "--alpha", help="loss CE * alpha * log(LAT_us)^beta"),
    beta: float = typer.Option(_D.beta, "--beta"),
    target_ms: Optional[float] = typer.Option(None, "--target-ms", help="latency budget: loss CE + lambda * (log(LAT/T)^2 + log(LAT_peak/T)^2), see docs/search.md"),
    target_weight: float = typer.Option(_D.target_weight, "--target-weight", help="lambda of the target penalty"),
    mode: str = typer.Option("hard", "--mode", help="hard: run the sampled candidate only; soft: weighted sum of all"),
    estimator: str = typer.Option("rloo", "--estimator", help="hard mode's architecture gradient: rloo (score function over "
                                  "--theta-paths paths, leave-one-out baseline) or straight-through (see docs/search.md)"),
    theta_paths: int = typer.Option(_D.theta_paths, "--theta-paths", min=2, help="rloo: paths sampled per architecture step (same batch)"),
    samples: int = typer.Option(_D.samples, "--samples", "-k", min=0, help="architectures sampled from the final distribution"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="cap steps per phase per epoch (quick trials)"),
    min_epoch_steps: int = typer.Option(_D.min_epoch_steps, "--min-epoch-steps", min=1, help="small datasets are cycled until an epoch has this many weight steps"),
    calibrated: bool = typer.Option(False, "--calibrated", help="latency term, target and predictions from the LUT's "
                                    "stored calibration (fitted by `fbprof verify`) instead of raw LUT sums"),
    resume: bool = typer.Option(False, "--resume", help="continue from OUT/checkpoint.pt"),
    quiet: bool = quiet_option(),
    verbose: bool = verbose_option(),
    json_out: bool = json_option(),
) -> None:
    from fbprof.search.dnas import SearchConfig, run_search

    level = verbosity(quiet, verbose)

    cfg = SearchConfig(
        lut=str(lut), out=str(out), space=space, lut_resolution=lut_resolution, width=width, head_channels=head_channels,
        data=data, limit_per_class=limit_per_class, resolution=resolution, min_feature=min_feature, epochs=epochs, warmup_epochs=warmup_epochs,
        batch_size=batch_size, w_lr=w_lr, theta_lr=theta_lr, tau0=tau0, tau_decay=tau_decay, alpha=alpha, beta=beta,
        target_ms=target_ms, target_weight=target_weight, mode=mode, estimator=estimator, theta_paths=theta_paths, samples=samples, seed=seed, device=device,
        max_steps=max_steps, min_epoch_steps=min_epoch_steps, resume=resume, calibrated=calibrated,
    )
    cfg.validate()  # bad arguments are messages before any work starts (run_search checks again, for API callers)
    listener = SearchProgress(level < 0 or json_out)
    try:
        result = run_search(cfg, listener)
    finally:
        listener.stop()
    if json_out:
        from fbprof.cli.jsonout import emit

        emit("search", out=str(result.out), lut=str(lut), lut_space=result.lut_space,
             archs=[{"label": a.label, "name": a.name, "blocks": list(a.blocks), "channels": a.channels,
                     "resolution": a.resolution, "path": a.path,
                     "predicted_us": a.predicted_us, "macs": a.macs, "params": a.params, "log_prob": a.log_prob,
                     "warnings": list(a.warnings)} for a in result.archs],
             target_us=result.target_us, heldout_accuracy_supernet=result.heldout_accuracy,
             heldout_ce_supernet=result.heldout_ce, wall_s=result.wall_s,
             files={"summary": str(result.out / "summary.json"), "history": str(result.out / "theta_history.json"),
                    # the FBNetV2 search draws no theta plot
                    **({"plot": str(result.out / "theta.png")} if (result.out / "theta.png").exists() else {})})
        return
    print_result(result)


class SearchProgress(SearchListener):
    """Rich progress: one bar over every step of every epoch, with epoch, CE, latency and tau."""

    def __init__(self, quiet: bool = False) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.quiet = quiet
        self.progress = Progress(
            TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), TextColumn("{task.fields[status]}"), console=err_console, disable=quiet,
        )
        self.task = None
        self.started = False
        self.epoch = 0
        self.epochs = 0
        self.tau = 0.0
        self.steps_per_epoch = 0

    def on_start(self, info: dict) -> None:
        if not self.quiet:
            err_console.print(
                f"LUT {info['lut']} ({info['device_name']} / {info['backend']}), space {info['lut_space']}, "
                f"{info['layers']} searched layers\nproxy {info['proxy']}; {info['data']}; "
                f"{info['w_images']} images for w, {info['theta_images']} for theta; mode {info['mode']} "
                f"(theta: {info.get('theta_gradient', '?')}); "
                f"{info['epochs']} epochs ({info['warmup_epochs']} weights only) of {info['w_steps_per_epoch']} weight steps"
                + (f"; target {info['target_us'] / 1000:.3f} ms" if info.get("target_us") else "")
                + (f" (the LUT's architectures: {info['lut_range_us'][0] / 1000:.3f}..{info['lut_range_us'][1] / 1000:.3f} ms)"
                   if info.get("target_us") and len(info.get("lut_range_us") or []) == 2 else "")
                + (f"; latency {info['latency']}" if info.get("latency", "raw LUT sums") != "raw LUT sums" else "")
                + (f"; {info['world_size']} processes" if info.get("world_size", 1) > 1 else "")
            )
        self.epochs = info["epochs"]
        self.remaining_epochs = info["epochs"] - info["start_epoch"]

    def on_note(self, message: str) -> None:
        if not self.quiet:
            self.progress.console.print(f"[yellow]{message}")

    def on_epoch_start(self, epoch: int, epochs: int, tau: float, steps: dict) -> None:
        self.epoch, self.tau = epoch, tau
        n = sum(steps.values())
        if self.task is None:
            # the first epoch may be a warm-up (no theta steps): estimate later epochs at w + theta steps
            self.steps_per_epoch = n
            self.progress.start()
            self.started = True
            self.task = self.progress.add_task("search", total=n * self.remaining_epochs, status="")
        elif n != self.steps_per_epoch:
            done = self.progress.tasks[0].completed
            self.progress.update(self.task, total=done + n * (epochs - epoch + 1))
            self.steps_per_epoch = n

    def on_step(self, phase: str, step: int, steps: int, ce: float, latency_us: float) -> None:
        if self.task is not None:
            self.progress.update(self.task, advance=1, status=(
                f"epoch {self.epoch}/{self.epochs} {phase:5s} CE {ce:.3f} LAT {latency_us / 1000:.3f} ms tau {self.tau:.2f}"))

    def on_epoch_end(self, record: dict) -> None:
        if self.quiet:
            return
        self.progress.console.print(
            f"epoch {record['epoch']}/{self.epochs} [{record['phase']}] w CE {record['w_ce']:.3f}  "
            f"theta-split CE {record['theta_split_ce_most_likely']:.3f} acc {record['theta_split_accuracy_most_likely']:.3f} "
            f"(most likely path, BN recalibrated)  E[LAT] {record['expected_latency_us'] / 1000:.3f} ms  "
            f"most likely {record['most_likely_latency_us'] / 1000:.3f} ms  entropy {record['theta_entropy_nats']:.2f}  "
            f"tau {record['tau']:.2f}  {record['seconds']:.1f} s"
        )

    def on_finish(self, result) -> None:
        self.stop()

    def stop(self) -> None:
        if self.started:
            self.progress.stop()
            self.started = False


def print_result(result) -> None:
    from rich.table import Table

    dev = result.proxy.get("device_name", "?")
    t = Table("arch", "log P", "predicted ms", "MACs", "params", "file",
              title=f"searched on {result.lut_space}, latency predicted from the LUT of {dev} / {result.proxy.get('backend', '?')}"
                    + (f", calibrated ({result.proxy['latency']})" if result.proxy.get("latency", "raw LUT sums") != "raw LUT sums" else ""))
    for a in result.archs:
        t.add_row(a.label, f"{a.log_prob:.2f}", f"{a.predicted_us / 1000:.3f}", f"{a.macs / 1e6:.1f}M",
                  f"{a.params / 1e6:.2f}M", Path(a.path).name)
    console.print(t)
    console.print(f"architecture files in {result.out}/")
    best = result.best
    if best.channels is not None:  # a channel space (FBNetV2): block/width per layer, and the resolution
        console.print(f"most likely: {best.resolution} px; " + " ".join(f"{b}/{c}" for b, c in zip(best.blocks, best.channels)))
    else:
        console.print("most likely: " + " ".join(best.blocks))
    if result.target_us is not None:
        off = (best.predicted_us / result.target_us - 1) * 100
        console.print(f"target {result.target_us / 1000:.3f} ms: most likely is {off:+.1f}% off")
    if result.heldout_accuracy is not None:
        console.print(f"held-out accuracy of the most likely path with supernet weights (BN recalibrated): "
                      f"{result.heldout_accuracy:.3f} (indicative; train it from scratch for a real number)")
    plot = result.out / "theta.png"
    console.print(f"search wall time {result.wall_s:.1f} s; history {result.out / 'theta_history.json'}"
                  + (f", plot {plot}" if plot.exists() else ""))
    if best.warnings:  # one line; every row is in summary.json ("warnings" of each architecture)
        keys = [w.split(" ", 1)[0].rstrip(":") for w in best.warnings]
        err_console.print(f"[yellow]warning ({best.name}): {len(keys)} of its LUT rows are not ok: "
                          + ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
                          + " (see summary.json)")


def register(app: typer.Typer) -> None:
    app.command("search", help=HELP)(search)
