"""Shared fixtures: a session-wide artifact cache and quick measuring settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One artifact cache for the whole test run, shared by xdist workers (exports are slow; identical ops
    are shared; the cache's writes are atomic renames, so concurrent workers are safe)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = root / "shared-cache" / "artifacts"  # where FBPROF_CACHE_DIR=shared-cache puts artifacts
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def quick_loop():
    from fbprof.loop import LoopConfig

    return LoopConfig(warmup_runs=1, warmup_min_s=0.0, min_runs=5, min_time_s=0.0, max_time_s=5.0, retries=0,
                      retry_pause_s=0.0)


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch, cache_dir):
    monkeypatch.setenv("FBPROF_CACHE_DIR", str(cache_dir.parent))  # the CLI's default cache is cache_dir too


def fbprof_cmd() -> list[str]:
    exe = Path(os.sys.executable).with_name("fbprof")
    return [str(exe)] if exe.exists() else [os.sys.executable, "-m", "fbprof.cli"]


@pytest.fixture
def remote_device():
    """A device that measures one loop at a time and cannot pair samples (ADB and companion devices are like it)."""
    from fbprof.devices.base import Device

    class Remote(Device):
        name = "remote"

        def fingerprint(self, backend, threads):
            return {}

        def measure(self, artifact, backend, cfg, threads, on_retry=None):
            raise AssertionError("not reached")

    return Remote()
