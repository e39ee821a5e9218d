"""Measuring whole networks interleaved: every round visits every network once in a fresh seeded order,
with the noise network's replicas spread evenly through the round; or, on a device that times single
samples interleaved, sample-level pairing cut into blocks (:func:`measure_paired_blocks`)."""

from __future__ import annotations

import random
import statistics
from typing import Sequence

from fbprof.artifact import Artifact, check_output
from fbprof.devices.base import Device
from fbprof.errors import InputError, MeasurementError
from fbprof.loop import OK, LoopConfig
from fbprof.verify.plan import VerifyListener

__all__ = ["round_order", "measure_interleaved", "paired_samples", "measure_paired_blocks"]


def round_order(names: Sequence[str], noise: str | None, replicas: int, rng: random.Random) -> list[tuple[str, int]]:
    """One round's visiting order: the archs shuffled, the noise network's replicas spread evenly.

    Items are (name, replica): replica -1 is an arch's own measurement, 0.. the noise replicas.
    """
    seq: list[tuple[str, int]] = [(n, -1) for n in names]
    rng.shuffle(seq)
    if noise is None or replicas <= 0:
        return seq
    out: list[tuple[str, int]] = []
    slots: dict[int, list[int]] = {}
    for j in range(replicas):
        slots.setdefault(min(len(seq), int((j + 0.5) * len(seq) / replicas)), []).append(j)
    for i in range(len(seq) + 1):
        out += [(noise, j) for j in slots.get(i, [])]
        if i < len(seq):
            out.append(seq[i])
    return out


def measure_interleaved(
    device: Device,
    backend: str,
    threads: int,
    loop: LoopConfig,
    artifacts: dict[str, Artifact],
    rounds: int,
    seed: int,
    noise: str | None = None,
    noise_repeats: int = 0,
    check_atol: float = 1e-3,
    listener: VerifyListener | None = None,
) -> tuple[dict[str, list[float]], list[list[float]], dict[str, str], dict[str, list[str]]]:
    """Measure every artifact once per round (seeded fresh order each round), ``rounds`` times.

    Returns (per-arch round medians in us, noise replicas' round medians in us [replica][round],
    failures name -> reason, notes name -> [status notes]). The first measurement of an artifact
    checks its output against torch's.
    """
    lis = listener or VerifyListener()
    rng = random.Random(f"order-{seed}")
    per_arch: dict[str, list[float]] = {n: [] for n in artifacts}
    noise_r: list[list[float]] = [[] for _ in range(noise_repeats if noise in artifacts else 0)]
    failed: dict[str, str] = {}
    notes: dict[str, list[str]] = {}
    checked: set[str] = set()
    total = rounds * (len(artifacts) + len(noise_r))
    # the device's scope for a run of sessions (ExecuTorch: its thread pool set once, not per session)
    with device.session_scope(backend, threads):
        lis.on_measure_start(total)
        for r in range(rounds):
            order = round_order(sorted(artifacts), noise if noise_r else None, len(noise_r), rng)
            for name, replica in order:
                if name in failed:
                    continue
                art = artifacts[name]
                device.before_row(name)
                try:
                    res = device.measure(art, backend, loop, threads)
                except MeasurementError as e:
                    failed[name] = e.message
                    lis.on_note(e.message)
                    continue
                if name not in checked:
                    checked.add(name)
                    problem = check_output(art.expected, res.output, check_atol)
                    if problem:
                        notes.setdefault(name, []).append(problem)
                m = res.measurement
                if m.status != OK:
                    who = "" if replica < 0 else f" (noise replica {replica + 1})"
                    notes.setdefault(name, []).append(f"round {r + 1}{who}: {m.status}: {'; '.join(m.notes)}")
                us = m.stats.median * 1e6
                if replica < 0:
                    per_arch[name].append(us)
                else:
                    noise_r[replica].append(us)
                lis.on_measure_done(name, r, us)
    return per_arch, noise_r, failed, notes


def paired_samples(
    device: Device,
    backend: str,
    threads: int,
    items: dict[str, Artifact],
    iterations: int,
    seed: int,
    check_atol: float = 1e-3,
    listener: VerifyListener | None = None,
) -> tuple[dict[str, list[float]], dict[str, str], dict[str, list[str]]]:
    """Sample-level pairing on the device (:meth:`Device.measure_paired`): per-iteration samples in us by
    name, failures (the whole run, when the device fails) and notes (an output that does not match torch)."""
    lis = listener or VerifyListener()
    try:
        with device.session_scope(backend, threads):
            lis.on_measure_start(iterations)
            secs, outputs = device.measure_paired(items, backend, threads, iterations, seed,
                                                  on_iteration=lambda i: lis.on_measure_done("paired", i, 0.0))
    except MeasurementError as e:
        return {}, {n: e.message for n in items}, {}
    notes: dict[str, list[str]] = {}
    for name, art in items.items():
        problem = check_output(art.expected, outputs[name], check_atol)
        if problem:
            notes.setdefault(name, []).append(problem)
    return {n: [x * 1e6 for x in xs] for n, xs in secs.items()}, {}, notes


def measure_paired_blocks(
    device: Device,
    backend: str,
    threads: int,
    artifacts: dict[str, Artifact],
    iterations: int,
    blocks: int,
    seed: int,
    noise: str | None = None,
    noise_repeats: int = 0,
    check_atol: float = 1e-3,
    listener: VerifyListener | None = None,
) -> tuple[dict[str, list[float]], list[list[float]], dict[str, str], dict[str, list[str]]]:
    """:func:`measure_interleaved`'s results from :func:`paired_samples`: ``iterations`` iterations, each
    timing every artifact (and ``noise_repeats`` separate sessions of the noise network) once; the
    iterations are cut into ``blocks`` consecutive blocks, and a block's median plays the part of a round's
    median (same report, same noise floor)."""
    if blocks < 1 or iterations < blocks:
        raise InputError(f"--paired {iterations} must be at least --rounds {blocks} (iterations are cut into rounds)")
    replicas = noise_repeats if noise in artifacts else 0
    items = dict(artifacts) | {f"{noise}#noise{j}": artifacts[noise] for j in range(replicas)}
    us, failed, notes = paired_samples(device, backend, threads, items, iterations, seed, check_atol, listener)
    if failed:
        return {n: [] for n in artifacts}, [], {n: failed[n] for n in artifacts}, {}
    edges = [round(b * iterations / blocks) for b in range(blocks + 1)]

    def block_medians(xs: list[float]) -> list[float]:
        return [statistics.median(xs[edges[b]:edges[b + 1]]) for b in range(blocks)]

    per_arch = {n: block_medians(us[n]) for n in artifacts}
    noise_r = [block_medians(us[f"{noise}#noise{j}"]) for j in range(replicas)]
    return per_arch, noise_r, {}, {n: v for n, v in notes.items() if n in artifacts}
