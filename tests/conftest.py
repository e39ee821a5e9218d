"""Shared fixtures: a session-wide artifact cache and quick measuring settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One artifact cache per test session (exports are slow; identical ops are shared)."""
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def quick_loop():
    from fbprof.profiler.loop import LoopConfig

    return LoopConfig(warmup_runs=1, warmup_min_s=0.0, min_runs=5, min_time_s=0.0, max_time_s=5.0, retries=0,
                      retry_pause_s=0.0)


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch, cache_dir):
    monkeypatch.setenv("FBPROF_CACHE_DIR", str(cache_dir))


def fbprof_cmd() -> list[str]:
    exe = Path(os.sys.executable).with_name("fbprof")
    return [str(exe)] if exe.exists() else [os.sys.executable, "-m", "fbprof.cli"]
