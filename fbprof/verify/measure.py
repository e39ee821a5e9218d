"""Measuring whole networks interleaved: every round visits every network once in a fresh seeded order,
with the noise network's replicas spread evenly through the round."""

from __future__ import annotations

import random
from typing import Sequence

from fbprof.artifact import Artifact, check_output
from fbprof.devices.base import Device
from fbprof.errors import MeasurementError
from fbprof.loop import OK, LoopConfig
from fbprof.verify.plan import VerifyListener

__all__ = ["round_order", "measure_interleaved"]


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
