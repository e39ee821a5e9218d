"""Android phones (and Linux boards) over ADB: ``fbprof measure --device s8`` or ``--device adb:HOST:PORT``.

The transport is adb-shell (see :mod:`fbprof.devices.adb_link`). Two runners measure on the phone:

* ``benchmark_model`` (default): TFLite's benchmark tool, an arm64 binary the user supplies with
  ``--benchmark-binary PATH`` (pushed) or that is already on the phone; backend ``litert``
  (.tflite models). See :mod:`fbprof.devices.adb_benchmark`.
* ``python``: for devices with Python (Termux, Linux boards): fbprof pushes its measuring loop
  (fbprof/loop.py) and a small runner, and runs ONNX Runtime or LiteRT there with the same
  loop as the local device; the output comes back and is checked against torch.

Models are pushed in batches under ``remote_dir``. Before each row the thermal gate reads the
thermal zones, waits (bounded) while the phone is hotter than ``thermal_max_c`` and records the
temperatures in the row. Every path and argument sent to the device shell is quoted.

Settings (profile ``settings:``, overridden by ``--option KEY=VALUE``) are listed in :data:`SETTINGS`.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fbprof.devices.adb_benchmark import benchmark_command, parse_benchmark_output, run_stats
from fbprof.devices.adb_link import AdbLink, Timeouts, default_key_path, ensure_key, require_adb_shell
from fbprof.artifact import Artifact
from fbprof.backends import get_backend
from fbprof.devices.base import Device, DeviceResult
from fbprof.devices.profiles import coerce_setting
from fbprof.errors import DeviceError, InputError, MeasurementError
from fbprof.loop import Attempt, LoopConfig, Measurement, Stats, measure_attempts

__all__ = ["AdbSettings", "AdbDevice", "SETTINGS", "RUNNERS", "from_profile", "parse_settings"]

#: runner -> backends it measures
RUNNERS: dict[str, tuple[str, ...]] = {"benchmark_model": ("litert",), "python": ("onnxruntime", "litert")}
_HEX = re.compile(r"[0-9a-fA-F]{1,16}")


@dataclass(frozen=True)
class AdbSettings:
    runner: str = "benchmark_model"
    remote_dir: str = "/data/local/tmp/fbprof"  # where models, runner and outputs go on the device
    python: str = "python3"  # the device's Python (python runner)
    benchmark_model: str = "/data/local/tmp/benchmark_model"  # a benchmark_model already on the device
    benchmark_binary: str | None = None  # a local benchmark_model binary to push (wins over benchmark_model)
    benchmark_args: tuple[str, ...] = ()  # extra flags, e.g. ["--use_xnnpack=true"]
    affinity: str | None = None  # taskset mask (hex), e.g. "f0" for the big cores of a 4+4 SoC
    transport_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    auth_timeout_s: float = 30.0
    run_margin_s: float = 60.0  # added to a run's longest expected time (start-up, model load)
    reconnect_attempts: int = 3
    backoff_s: float = 1.0
    push_batch: int = 16
    cleanup: bool = True  # remove pushed models and outputs when done
    adbkey: str | None = None  # private key path (default $FBPROF_ADBKEY or ~/.android/adbkey)
    thermal_dir: str = "/sys/class/thermal"
    thermal_match: str = ""  # regex on the zone type; empty: every zone
    thermal_max_c: float | None = 45.0  # wait while the hottest zone is above this; None: no gate
    thermal_wait_s: float = 120.0  # longest wait per row
    thermal_poll_s: float = 5.0
    initial_cooldown_s: float = 0.0  # pause before the first row
    cpu_dir: str = "/sys/devices/system/cpu"


SETTINGS = {f.name: f for f in fields(AdbSettings)}
_POSITIVE = {"transport_timeout_s", "read_timeout_s", "auth_timeout_s", "thermal_poll_s", "push_batch"}


def _convert(name: str, value: Any, where: str) -> Any:
    return coerce_setting(name, value, str(SETTINGS[name].type), where, positive=name in _POSITIVE)


def parse_settings(profile_settings: dict[str, Any], options: dict[str, Any], source: str) -> AdbSettings:
    """Profile settings, then options (strings from --option), checked and converted."""
    values: dict[str, Any] = {}
    for where, items in ((source or "profile", profile_settings), ("--option", options)):
        for k, v in items.items():
            if k == "token":
                raise InputError("--token applies to ios: devices (the companion app), not to adb devices")
            if k not in SETTINGS:
                raise InputError(f"{where}: unknown adb device setting {k!r}; known: {', '.join(sorted(SETTINGS))}")
            values[k] = _convert(k, v, where)
    s = AdbSettings(**values)
    if s.runner not in RUNNERS:
        raise InputError(f"unknown runner {s.runner!r}; adb runners: {', '.join(RUNNERS)}")
    if s.affinity is not None and not _HEX.fullmatch(s.affinity):
        raise InputError(f"affinity {s.affinity!r}: expected a hex CPU mask for taskset, e.g. f0")
    if not s.remote_dir.startswith("/"):
        raise InputError(f"remote_dir {s.remote_dir!r}: expected an absolute path on the device")
    if s.read_timeout_s < s.transport_timeout_s:
        raise InputError(f"read_timeout_s ({s.read_timeout_s:g}) must be >= transport_timeout_s "
                         f"({s.transport_timeout_s:g})")
    try:
        re.compile(s.thermal_match)
    except re.error as e:
        raise InputError(f"thermal_match {s.thermal_match!r}: not a regular expression ({e})") from None
    return s


def _q(s: str) -> str:
    return shlex.quote(s)


def _remote_name(key: str) -> str:
    """A file name for an op key on the device (only '/' and NUL changed; everything is quoted)."""
    return key.replace("/", "_").replace("\0", "_") or "op"


@dataclass
class _Pushed:
    model: str
    input: str
    output: str


@dataclass
class ThermalReading:
    zones: list[tuple[str, str, float]] = field(default_factory=list)  # (zone, type, celsius)

    @property
    def hottest(self) -> tuple[str, str, float] | None:
        return max(self.zones, key=lambda z: z[2]) if self.zones else None


class AdbDevice(Device):
    """A phone reached over ADB, measuring with benchmark_model or the python runner."""

    def __init__(self, name: str, link: AdbLink, settings: AdbSettings, *,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.perf_counter) -> None:
        self.name = name
        self.link = link
        self.s = settings
        self.sleep = sleep
        self.clock = clock
        self.supported_backends = RUNNERS[settings.runner]
        self._setup_done: set[str] = set()
        self._runtime: dict[str, str] = {}
        self._binary: str | None = None
        self._pushed: dict[Path, _Pushed] = {}
        self._pending: list[Artifact] = []
        self._rows = 0
        self._tmp = Path(tempfile.mkdtemp(prefix="fbprof-adb-"))
        self.events: list[str] = []
        #: what this run made on the device, and all cleanup may delete: files it pushed or had written, and
        #: the folders it created (removed only when empty, deepest first)
        self.created_files: list[str] = []
        self.created_dirs: list[str] = []

    def check_backend(self, backend: str) -> None:
        try:
            super().check_backend(backend)
        except InputError as e:
            other = [r for r, bs in RUNNERS.items() if backend in bs]
            raise InputError(f"{e.message} with the {self.s.runner} runner",
                             hint=f"--runner {other[0]} runs it" if other else None) from None

    # -- paths --------------------------------------------------------------------------------
    @property
    def remote(self) -> str:
        return self.s.remote_dir.rstrip("/") or "/"

    def _rpath(self, *parts: str) -> str:
        return "/".join([self.remote, *parts])

    # -- setup --------------------------------------------------------------------------------
    def _ensure_setup(self, backend: str) -> None:
        if backend in self._setup_done:
            return
        self.check_backend(backend)
        # create only the folders that are missing, and say which: cleanup removes those and nothing else
        dirs = (self.remote, self._rpath("models"), self._rpath("out"))
        wanted = [d for d in dirs if d not in self.created_dirs]
        script = "; ".join([f"if [ ! -d {_q(d)} ]; then mkdir -p {_q(d)} && echo FBPROF_MKDIR {_q(d)}; fi"
                            for d in wanted] + ["test -d " + " -a -d ".join(_q(d) for d in dirs)])
        out, rc = self.link.shell(script, "preparing " + self.remote)
        for line in out.splitlines():
            made = line[len("FBPROF_MKDIR "):].strip() if line.startswith("FBPROF_MKDIR ") else None
            if made in wanted and made not in self.created_dirs:
                self.created_dirs.append(made)
        if rc != 0:
            raise DeviceError(f"cannot create {self.remote} on the device: {out.strip()[-300:]}",
                              hint="pick a writable folder with --option remote_dir=/data/local/tmp/fbprof")
        if self.s.affinity:
            out, rc = self.link.shell(f"taskset {_q(self.s.affinity)} true 2>&1", "checking the affinity mask")
            if rc != 0:
                raise DeviceError(f"taskset {self.s.affinity} fails on the device: {out.strip()[-300:]}",
                                  hint="pick a mask of this SoC's cores (cpu0 = 1, cpu4-7 = f0; see "
                                       "/sys/devices/system/cpu) with --option affinity=MASK, or --option affinity=none")
        if self.s.runner == "python":
            self._setup_python(backend)
        else:
            self._setup_benchmark()
        self._setup_done.add(backend)

    def _setup_python(self, backend: str) -> None:
        from importlib import resources

        pkg = resources.files("fbprof")
        files = [(pkg / "backends" / f"{backend}.py", f"fbprof_backend_{backend}.py")]
        if not any(b in self._setup_done for b in RUNNERS["python"]):
            files = [(pkg / "loop.py", "fbprof_loop.py"), (pkg / "devices" / "adb_remote_runner.py", "fbprof_runner.py"),
                     *files]
        self._claim([self._rpath(name) for _, name in files])
        for src, name in files:
            local = self._tmp / name
            local.write_bytes(src.read_bytes())
            self.link.push(local, self._rpath(name), f"pushing {name}")
        cmd = f"{_q(self.s.python)} {_q(self._rpath('fbprof_runner.py'))} version {_q(backend)} 2>&1"
        out, rc = self.link.shell(cmd, "checking the device's Python", self._run_timeouts(0.0))  # imports take time
        info = _result_line(out)
        if info is None:
            raise DeviceError(
                f"the python runner could not start on the device with {self.s.python!r} (exit {rc}): "
                f"{out.strip()[-400:]}",
                hint="install Python there (Termux: pkg install python), point --option python=PATH at it, or use "
                     "--runner benchmark_model")
        if not info.get("version"):
            pip = {"ai_edge_litert": "ai-edge-litert"}.get(str(info.get("module")), info.get("module"))
            raise DeviceError(f"the device's Python ({self.s.python}) cannot import {info.get('module')} for backend "
                              f"{backend}", hint=f"install it on the device (pip install {pip}) or pick another --backend")
        if not info.get("numpy"):
            raise DeviceError(f"the device's Python ({self.s.python}) has no numpy", hint="pip install numpy there")
        self._runtime[backend] = (f"{info['module']} {info['version']} (device python {info.get('python')}, "
                                  f"{info.get('machine')})")

    def _setup_benchmark(self) -> None:
        if self.s.benchmark_binary:
            local = Path(self.s.benchmark_binary).expanduser()
            self._binary = self._rpath("benchmark_model")
            self._claim([self._binary])
            self.link.push(local, self._binary, "pushing benchmark_model", mode=0o755)
        else:
            self._binary = self.s.benchmark_model
        out, rc = self.link.shell(f"test -x {_q(self._binary)}", "looking for benchmark_model")
        if rc != 0:
            raise DeviceError(f"no executable benchmark_model at {self._binary} on the device",
                              hint="pass --benchmark-binary PATH (TFLite's android_aarch64_benchmark_model) to push "
                                   "one, or --option benchmark_model=DEVICE_PATH")
        out, rc = self.link.shell(f"sha256sum {_q(self._binary)} 2>/dev/null || md5sum {_q(self._binary)}",
                                  "identifying benchmark_model")
        digest = out.split()[0][:16] if rc == 0 and out.split() else "unknown build"
        self._runtime["litert"] = f"tflite benchmark_model {digest}"

    # -- fingerprint --------------------------------------------------------------------------
    def fingerprint(self, backend: str, threads: int) -> dict[str, str]:
        self._ensure_setup(backend)
        props = ("ro.product.manufacturer", "ro.product.model", "ro.product.board", "ro.board.platform",
                 "ro.hardware", "ro.product.cpu.abi", "ro.build.version.release", "ro.build.version.sdk",
                 "ro.build.fingerprint")
        script = (
            f"for p in {' '.join(props)}; do printf 'prop %s=%s\\n' \"$p\" \"$(getprop \"$p\" 2>/dev/null)\"; done; "
            "printf 'uname %s\\n' \"$(uname -srm 2>/dev/null)\"; "
            f"for c in {_q(self.s.cpu_dir)}/cpu[0-9]*; do [ -d \"$c\" ] || continue; "
            "printf 'cpu %s %s %s %s\\n' \"${c##*/}\" "
            "\"$(cat \"$c/cpufreq/scaling_governor\" 2>/dev/null || echo -)\" "
            "\"$(cat \"$c/cpufreq/scaling_cur_freq\" 2>/dev/null || echo -)\" "
            "\"$(cat \"$c/cpufreq/cpuinfo_max_freq\" 2>/dev/null || echo -)\"; done"
        )
        out, _ = self.link.shell(script, "reading the device fingerprint")
        prop: dict[str, str] = {}
        cpus: list[tuple[str, str, str, str]] = []
        uname = ""
        for line in out.splitlines():
            if line.startswith("prop ") and "=" in line:
                k, _, v = line[5:].partition("=")
                prop[k.strip()] = v.strip()
            elif line.startswith("uname "):
                uname = line[6:].strip()
            elif line.startswith("cpu "):
                parts = line.split()
                if len(parts) == 5:
                    cpus.append((parts[1], parts[2], parts[3], parts[4]))

        def p(k: str) -> str:
            return prop.get(k) or ""

        model = " ".join(x for x in (p("ro.product.manufacturer"), p("ro.product.model")) if x) or "unknown (no getprop)"
        board = p("ro.board.platform") or p("ro.product.board") or p("ro.hardware") or "unknown"
        abi = p("ro.product.cpu.abi")
        android = p("ro.build.version.release")
        governors = sorted({c[1] for c in cpus if c[1] != "-"})
        gov = ", ".join(governors) or "unreadable"
        if governors and governors != ["performance"]:
            gov += " (not 'performance': clocks may change during the run)"
        thermal = self.read_thermal()
        hot = thermal.hottest
        fp = {
            "device": self.name,
            "device_model": model,
            "cpu_model": f"{board} ({abi})" if abi else board,
            "runtime": self._runtime.get(backend, "unknown"),
            "affinity": f"taskset {self.s.affinity}" if self.s.affinity else "not pinned",
            "denormals": get_backend(backend).denormals if self.s.runner == "python" else "runtime default",
            "os": (f"Android {android} (SDK {p('ro.build.version.sdk')})" if android else "no Android properties")
                  + (f"; {uname}" if uname else ""),
            "governor": gov,
            "cpu_freqs_khz": " ".join(f"{c[0]}:{c[2]}/{c[3]}" for c in cpus) or "unreadable",
            "cores": str(len(cpus)) if cpus else "unknown",
            "build": p("ro.build.fingerprint") or "unknown",
            "transport": self.link.description,
            "runner": self.s.runner,
            "thermal": (f"{len(thermal.zones)} zones, hottest {hot[2]:.1f} C ({hot[1] or hot[0]}) at start; gate "
                        f"{self.s.thermal_max_c if self.s.thermal_max_c is not None else 'off'} C"
                        if hot else "no readable thermal zones"),
        }
        if self.s.runner == "benchmark_model":
            fp["measuring"] = ("benchmark_model --num_runs=min_runs --min_secs=min_time_s --max_secs=max_time_s "
                               "--warmup_runs --warmup_min_secs; 1 inference per sample; median from its median "
                               "field when printed, else its average")
        return fp

    # -- thermal gate -------------------------------------------------------------------------
    def read_thermal(self) -> ThermalReading:
        script = (f"for z in {_q(self.s.thermal_dir)}/thermal_zone*; do t=$(cat \"$z/temp\" 2>/dev/null) || continue; "
                  "printf '%s\\t%s\\t%s\\n' \"${z##*/}\" \"$(cat \"$z/type\" 2>/dev/null)\" \"$t\"; done")
        out, _ = self.link.shell(script, "reading thermal zones")
        pat = re.compile(self.s.thermal_match) if self.s.thermal_match else None
        zones = []
        for line in out.splitlines():
            parts = line.split("\t")
            if len(parts) != 3:
                continue
            zone, kind, raw = parts
            try:
                v = float(raw)
            except ValueError:
                continue
            c = v / 1000.0 if abs(v) >= 1000 else v  # millidegrees on most kernels
            if not -40.0 <= c <= 150.0:
                continue  # a sensor that is off or reports nonsense
            if pat is not None and not pat.search(kind or zone):
                continue
            zones.append((zone, kind, c))
        return ThermalReading(zones)

    def before_row(self, key: str) -> dict[str, str]:
        env: dict[str, str] = {}
        if self._rows == 0 and self.s.initial_cooldown_s > 0:
            self.sleep(self.s.initial_cooldown_s)
            env["cooldown_s"] = f"{self.s.initial_cooldown_s:g}"
        self._rows += 1
        reading = self.read_thermal()
        hot = reading.hottest
        if hot is None:
            return env
        limit = self.s.thermal_max_c
        waited = 0.0
        while limit is not None and hot is not None and hot[2] > limit and waited < self.s.thermal_wait_s:
            step = min(self.s.thermal_poll_s, self.s.thermal_wait_s - waited)
            self.sleep(step)
            waited += step
            reading = self.read_thermal()
            hot = reading.hottest or hot
        env["temp_c"] = f"{hot[2]:.1f}"
        env["temp_zone"] = hot[1] or hot[0]
        if waited:
            env["thermal_wait_s"] = f"{waited:g}"
        if limit is not None and hot[2] > limit:
            env["thermal"] = f"still above {limit:g}C"
        return env

    def _claim(self, paths: list[str]) -> None:
        """``paths`` are about to be pushed: record as created (removed by cleanup) those that do not exist yet.
        A file already there (a user's, or one an earlier run left) is overwritten but never removed. Files in a
        folder this run created are new without asking; the others are checked in one shell command."""
        paths = [p for p in paths if p not in self.created_files]
        ask = [p for p in paths if p.rsplit("/", 1)[0] not in self.created_dirs]
        existing: set[str] = set()
        chunks: list[list[str]] = []  # shell commands under ~3000 characters, as cleanup_commands keeps them
        for path in ask:
            if not chunks or sum(len(_q(x)) + 1 for x in chunks[-1]) + len(_q(path)) > 2800:
                chunks.append([])
            chunks[-1].append(path)
        for chunk in chunks:  # by index, so that no file name has to survive the round trip through the shell
            script = ("i=0; for f in " + " ".join(_q(p) for p in chunk) +
                      '; do if [ -e "$f" ] || [ -L "$f" ]; then echo "FBPROF_EXISTS $i"; fi; i=$((i+1)); done; true')
            out, _ = self.link.shell(script, "checking which files are already on the device")
            for line in out.splitlines():
                tag, _, idx = line.strip().partition(" ")
                if tag == "FBPROF_EXISTS" and idx.isdigit() and int(idx) < len(chunk):
                    existing.add(chunk[int(idx)])
        self.created_files += [p for p in paths if p not in existing]

    def cleanup_commands(self, limit: int = 3000) -> list[str]:
        """Shell commands (each under ``limit`` characters) that remove what this run created and nothing
        else. Folders go with ``rmdir``, which leaves a folder that holds anything fbprof did not put there."""
        cmds: list[str] = []
        cur = ""
        for f in self.created_files:
            arg = " " + _q(f)
            if cur and len(cur) + len(arg) > limit:
                cmds.append(cur)
                cur = ""
            cur = (cur or "rm -f --") + arg
        if cur:
            cmds.append(cur)
        dirs = sorted(self.created_dirs, key=lambda d: -d.count("/"))
        if dirs:
            cmds.append("; ".join(f"rmdir -- {_q(d)} 2>/dev/null" for d in dirs) + "; true")
        return cmds

    # -- pushing ------------------------------------------------------------------------------
    def prepare(self, artifacts: list[Artifact]) -> None:
        """The artifacts about to be measured: they are pushed in batches as rows come."""
        self._pending = [a for a in artifacts if a.path not in self._pushed]

    def _push_one(self, art: Artifact) -> _Pushed:
        return self._push_batch([art])[0]

    def _push_batch(self, arts: list[Artifact]) -> list[_Pushed]:
        models, outs = self._rpath("models"), self._rpath("out")
        plan = []
        for art in arts:
            if art.path.is_dir():
                raise MeasurementError(f"{art.key}: {art.path.name} is a folder; adb runners take single-file models")
            name = _remote_name(art.key)
            plan.append((art, _Pushed(f"{models}/{name}{art.path.suffix}", f"{models}/{name}.input.npy",
                                      f"{outs}/{name}.output.npy")))
        python = self.s.runner == "python"
        self._claim([p for _, x in plan for p in ((x.model, x.input, x.output) if python else (x.model,))])
        for art, pushed in plan:
            self.link.push(art.path, pushed.model, f"pushing {art.key}")
            if python:
                local_in = self._tmp / "input.npy"
                np.save(local_in, np.ascontiguousarray(art.input), allow_pickle=False)
                self.link.push(local_in, pushed.input, f"pushing the input of {art.key}")
            self._pushed[art.path] = pushed
        return [x for _, x in plan]

    def _ensure_pushed(self, art: Artifact) -> _Pushed:
        if art.path in self._pushed:
            return self._pushed[art.path]
        batch = [art]
        pending = [a for a in self._pending if a.path != art.path and a.path not in self._pushed]
        batch += pending[: max(0, self.s.push_batch - 1)]
        self._push_batch(batch)
        self._pending = [a for a in self._pending if a.path not in self._pushed]
        return self._pushed[art.path]

    # -- measuring ----------------------------------------------------------------------------
    def _run_timeouts(self, longest_s: float) -> Timeouts:
        silent = max(self.s.transport_timeout_s, longest_s + self.s.run_margin_s)
        read = max(silent, self.s.read_timeout_s)
        return Timeouts(silent, read, read + self.s.read_timeout_s)

    def measure(self, artifact: Artifact, backend: str, cfg: LoopConfig, threads: int, on_retry=None) -> DeviceResult:
        self._ensure_setup(backend)
        before = self.link.reconnects
        pushed = self._ensure_pushed(artifact)
        if self.s.runner == "python":
            result = self._measure_python(artifact, pushed, backend, cfg, threads, on_retry)
        else:
            result = self._measure_benchmark(artifact, pushed, cfg, threads, on_retry)
        if self.link.reconnects > before:
            result.env["reconnects"] = str(self.link.reconnects - before)
        return result

    def _taskset(self) -> list[str]:
        return ["taskset", self.s.affinity] if self.s.affinity else []

    def _measure_python(self, art: Artifact, pushed: _Pushed, backend: str, cfg: LoopConfig, threads: int,
                        on_retry) -> DeviceResult:
        args = [*self._taskset(), self.s.python, self._rpath("fbprof_runner.py"), "measure", backend, pushed.model,
                pushed.input, pushed.output, str(int(threads)), json.dumps(cfg.to_dict(), sort_keys=True)]
        longest = (cfg.retries + 1) * (cfg.max_time_s + cfg.warmup_min_s) + cfg.retries * cfg.retry_pause_s
        cmd = " ".join(_q(a) for a in args) + " 2>&1"
        out, rc = self.link.shell(cmd, f"measuring {art.key}", self._run_timeouts(longest))
        res = _result_line(out)
        if res is None:
            err = _error_line(out)
            if err is not None:
                raise MeasurementError(f"{art.key}: {backend} on the device failed: {err.get('error')}")
            if rc in (126, 127):
                raise DeviceError(f"the device could not start {self.s.python!r} (exit {rc}): {out.strip()[-300:]}")
            raise MeasurementError(f"{art.key}: the python runner exited with {rc} without a result: "
                                   f"{out.strip()[-400:]}")
        for attempt, cv in res.get("retries", []):
            if on_retry is not None:
                on_retry(int(attempt), float(cv))
        local_out = self._tmp / "output.npy"
        self.link.pull(pushed.output, local_out, f"fetching the output of {art.key}")
        try:
            output = np.load(local_out, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise MeasurementError(f"{art.key}: the output from the device is unreadable: {e}") from None
        m = Measurement(Stats(**res["stats"]), res["status"], int(res["attempts"]), float(res["loop_s"]),
                        list(res.get("notes", [])))
        return DeviceResult(m, output)

    def _measure_benchmark(self, art: Artifact, pushed: _Pushed, cfg: LoopConfig, threads: int,
                           on_retry) -> DeviceResult:
        assert self._binary is not None
        cmd = benchmark_command(self._binary, pushed.model, cfg, threads, self.s.affinity, self.s.benchmark_args)

        def attempt() -> Attempt:
            t0 = self.clock()
            out, rc = self.link.shell(cmd, f"measuring {art.key}",
                                      self._run_timeouts(cfg.warmup_min_s + cfg.max_time_s))
            elapsed = self.clock() - t0
            if rc in (126, 127):
                raise DeviceError(f"the device could not run benchmark_model (exit {rc}): {out.strip()[-300:]}")
            try:
                run = parse_benchmark_output(out)
            except MeasurementError as e:
                raise MeasurementError(f"{art.key}: {e.message} (exit {rc})") from None
            stats, notes = run_stats(run)
            return Attempt(stats, run.count < cfg.min_runs, elapsed, notes, unit="runs")

        return DeviceResult(measure_attempts(attempt, cfg, self.sleep, on_retry), None)

    # -- closing ------------------------------------------------------------------------------
    def close(self) -> None:
        try:
            cmds = self.cleanup_commands()
            if self.s.cleanup and cmds and self.link._dev is not None:
                self.link.attempts, attempts = 0, self.link.attempts
                try:
                    for cmd in cmds:
                        self.link.shell(cmd, "cleaning up")
                finally:
                    self.link.attempts = attempts
        except DeviceError:
            pass  # the device is gone; nothing to clean
        finally:
            self.link.close()
            shutil.rmtree(self._tmp, ignore_errors=True)


def _json_line(out: str, mark: str) -> dict | None:
    for line in reversed(out.splitlines()):
        if line.startswith(mark):
            try:
                v = json.loads(line[len(mark):])
            except ValueError:
                return None
            return v if isinstance(v, dict) else None
    return None


def _result_line(out: str) -> dict | None:
    return _json_line(out, "FBPROF_RESULT ")


def _error_line(out: str) -> dict | None:
    return _json_line(out, "FBPROF_ERROR ")


def from_profile(profile, address: str | None, options: dict[str, Any]) -> AdbDevice:
    """Transport factory (see fbprof.devices.profiles): connects, so a missing phone fails here."""
    require_adb_shell()  # before any adb-shell import below: a missing extra is a message, not a traceback
    opts = dict(options)
    settings = parse_settings(profile.settings, opts, profile.source or profile.name)
    if settings.runner == "benchmark_model" and settings.benchmark_binary \
            and not Path(settings.benchmark_binary).expanduser().is_file():
        raise InputError(f"--benchmark-binary {settings.benchmark_binary}: no such file",
                         hint="TFLite publishes android_aarch64_benchmark_model builds; see docs/android.md")
    key = ensure_key(Path(settings.adbkey).expanduser() if settings.adbkey else default_key_path())
    link = AdbLink(address, key, transport_timeout_s=settings.transport_timeout_s,
                   read_timeout_s=settings.read_timeout_s, auth_timeout_s=max(settings.auth_timeout_s,
                                                                               settings.transport_timeout_s),
                   attempts=settings.reconnect_attempts, backoff_s=settings.backoff_s)
    dev = AdbDevice(profile.name, link, settings)
    link.on_event = dev.events.append
    try:
        link.connect()
    except BaseException:
        dev.close()
        raise
    return dev
