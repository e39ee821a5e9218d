"""The companion protocol: the reference companion's answers, the host client's requests, the shared
fixtures (tests/fixtures/companion), security limits, thermal gate and retries. No torch export here:
the models are small ONNX graphs built with onnx.helper and run by ONNX Runtime."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest

from fbprof.companion.protocol import (LOCKOUT_FAILURES, UNAUTHORIZED_MESSAGE, Limits, ProtocolError, model_name,
                                       pack_model, unpack_model, valid_name)
from fbprof.companion.phone_server import CompanionServer, Lockout
from fbprof.artifact import Artifact
from fbprof.devices.companion_client import (CompanionClient, CompanionDevice, CompanionSettings, from_profile,
                                      parse_address)
from fbprof.devices.profiles import load_profiles, resolve_device
from fbprof.errors import DeviceError, InputError, MeasurementError
from fbprof.loop import INVALID, OK, UNSTABLE, LoopConfig

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "companion"
SWIFT = REPO / "devices" / "ios"
TOKEN = "test-token-123456"
SHAPE = [1, 8, 16, 16]
LOOP = LoopConfig(warmup_runs=1, warmup_min_s=0.0, min_runs=5, min_time_s=0.0, max_time_s=5.0, retries=0,
                  retry_pause_s=0.0, target_sample_s=0.0002)


def fixtures() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(FIXTURES.glob("*.json"))}


def relu_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, SHAPE)
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, SHAPE)
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "relu", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


@pytest.fixture
def artifact(tmp_path) -> Artifact:
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    return Artifact("k3_e1:8x16x16:8:s1", "onnx", relu_onnx(tmp_path / "model.onnx"), x, np.maximum(x, 0))


@pytest.fixture
def server(tmp_path):
    s = CompanionServer(TOKEN, "127.0.0.1", 0, Limits(max_upload_bytes=200_000, max_models=3), formats=("onnx",),
                        store_dir=tmp_path / "store").start()
    yield s
    s.close()


def http(server: CompanionServer, token: str | None = TOKEN) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.Client(base_url=f"http://{server.address}", headers=headers, timeout=10, trust_env=False)


def zip_of(entries: dict[str, bytes | str | dict]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            if isinstance(data, dict):
                data = json.dumps(data)
            zf.writestr(name, data)
    return buf.getvalue()


def manifest(fmt="onnx", model="model.onnx") -> dict:
    return {"protocol": 1, "format": fmt, "model": model, "input": {"file": "input.bin", "dtype": "float32", "shape": SHAPE}}


def good_entries(artifact: Artifact) -> dict:
    return {"manifest.json": manifest(), "input.bin": artifact.input.astype("<f4").tobytes(),
            "model.onnx": artifact.path.read_bytes()}


#: objects keyed by data (compute units), not by field names: their shape is "a map of strings"
MAPS = ("compute_units_used",)


def shape_of(v, key: str | None = None):
    """The structure of a JSON value: keys and value kinds, not values."""
    if isinstance(v, dict) and key in MAPS:
        assert all(isinstance(x, str) for x in v.values()), v
        return "map of str"
    if isinstance(v, dict):
        return {k: shape_of(x, k) for k, x in v.items()}
    if isinstance(v, list):
        kinds = [shape_of(x) for x in v]
        assert all(k == kinds[0] for k in kinds), f"mixed list {v!r}"
        return [kinds[0]] if kinds else []
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    return type(v).__name__


# ------------------------------------------------------------------------------------------------ security
@pytest.mark.parametrize("auth", [None, f"Bearer wrong-{TOKEN}", "Bearer", f"Basic {TOKEN}", f"Bearer {TOKEN[:-1]}"])
def test_requests_without_the_right_token_are_refused(server, auth):
    fx = fixtures()["error_unauthorized"]["response"]
    for method, path in (("GET", "/v1/info"), ("GET", "/v1/models"), ("DELETE", "/v1/models/x"),
                         ("POST", "/v1/models/x/run"), ("PUT", "/v1/models/x")):
        headers = {"Authorization": auth} if auth else {}
        r = http(server, None).request(method, path, headers=headers, json={} if method in ("POST", "PUT") else None)
        assert r.status_code == 401 == fx["status"]
        assert r.json() == fx["body"]
        assert r.json()["message"] == UNAUTHORIZED_MESSAGE


def test_client_with_a_wrong_token_gets_a_clear_error(server):
    with pytest.raises(DeviceError, match=r"refused the pairing token \(401: missing or wrong pairing token") as e:
        CompanionDevice("ios", server.address, "not-the-token")
    assert "--token" in str(e.value) and "FBPROF_COMPANION_TOKEN" in str(e.value)


def test_missing_token_is_an_input_error(monkeypatch):
    monkeypatch.delenv("FBPROF_COMPANION_TOKEN", raising=False)
    prof, addr = resolve_device("ios:127.0.0.1:9", None, load_profiles())
    with pytest.raises(InputError, match=r"pairing token: pass --token TOKEN .* or set FBPROF_COMPANION_TOKEN"):
        from_profile(prof, addr, {})


def test_token_from_environment(server, monkeypatch):
    monkeypatch.setenv("FBPROF_COMPANION_TOKEN", TOKEN)
    prof, addr = resolve_device(f"ios:{server.address}", None, load_profiles())
    with from_profile(prof, addr, {}) as dev:
        assert dev.supported_backends == ("onnxruntime",)
        fp = dev.fingerprint("onnxruntime", 1)
        assert fp["device"] == "ios" and fp["runtime"].startswith("ONNX Runtime") and fp["compute_units"] == "all"
        # an identity field: units never mix in one LUT; ONNX Runtime's "all" is its CPU provider
        assert fp["runtime"].endswith(", compute units all (runs as cpuOnly)")
        assert fp["compute_units_used"] == "cpuOnly"


def test_oversized_upload_is_refused_before_reading(server, artifact):
    big = b"\0" * 300_000
    r = http(server).put("/v1/models/big", content=big, headers={"Content-Type": "application/zip"})
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    assert r.json()["message"] == "request body of 300000 bytes is over the limit of 200000 bytes"
    assert r.headers.get("connection") == "close"
    assert http(server).get("/v1/models").json() == {"models": []}


def test_zip_bomb_is_refused(server, artifact):
    small = CompanionServer(TOKEN, limits=Limits(max_unpacked_bytes=1 << 20), formats=("onnx",)).start()
    try:
        data = zip_of({**good_entries(artifact), "padding.bin": b"\0" * (4 << 20)})
        assert len(data) < 1 << 20
        r = http(small).put("/v1/models/bomb", content=data)
        assert r.status_code == 413 and "unpacks to" in r.json()["message"]
    finally:
        small.close()


@pytest.mark.parametrize("member", ["../../evil.txt", "/tmp/evil.txt", "a/../../evil.txt", "..\\evil.txt",
                                    "C:/evil.txt"])
def test_path_traversal_uploads_are_refused(server, artifact, tmp_path, member):
    data = zip_of({**good_entries(artifact), member: "pwned"})
    r = http(server).put("/v1/models/trav", content=data)
    assert r.status_code == 400, r.text
    assert r.json() == {"error": "unsafe_archive", "message": f"unsafe path in archive: {member!r}"}
    assert not list(tmp_path.rglob("evil.txt")) and not Path("/tmp/evil.txt").exists()
    assert http(server).get("/v1/models").json() == {"models": []}


def test_links_in_archives_are_refused(tmp_path, artifact):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, v in good_entries(artifact).items():
            zf.writestr(k, v if not isinstance(v, dict) else json.dumps(v))
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ProtocolError, match="link in archive: 'link'"):
        unpack_model(buf.getvalue(), tmp_path / "dest", ("onnx",), Limits())
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize("name,ok", [("k3_e1_8x16x16_8_s1-1f0c3a9b2d", True), ("a.b-c_d", True), ("..", False),
                                     ("../etc", False), ("a/b", False), ("", False), (".hidden", False),
                                     ("x" * 65, False), ("a..b", False), ("é", False)])
def test_model_names(name, ok):
    assert valid_name(name) is ok


def test_model_name_of_every_key_is_valid():
    for key in ("k5_e6:16x112x112:24:s2", "skip:8x16x16:16:s2", "fc:1984x1x1:1000:s1", "weird key/../x" * 10):
        assert valid_name(model_name(key)), model_name(key)
    assert model_name("a:b") != model_name("a_b")


def test_bad_name_in_url_is_refused(server):
    r = http(server).delete("/v1/models/..%2F..%2Fetc")
    assert r.status_code == 400 and r.json() == fixtures()["error_bad_name"]["response"]["body"]


def test_limits_on_models_and_runs(server, artifact):
    c = http(server)
    for i in range(3):
        assert c.put(f"/v1/models/m{i}", content=zip_of(good_entries(artifact))).status_code == 201
    r = c.put("/v1/models/m3", content=zip_of(good_entries(artifact)))
    assert r.status_code == 409 and r.json() == {"error": "too_many_models",
                                                 "message": "the companion holds 3 models (limit 3); delete some first"}
    assert c.put("/v1/models/m0", content=zip_of(good_entries(artifact))).status_code == 201  # replacing is fine
    for body, msg in (({"max_runs": 10_001}, "max_runs 10001 is over the limit 10000"),
                      ({"max_time_s": 1e9}, "max_time_s and warmup_min_s must be at most 120.0"),
                      ({"min_runs": -1}, "min_runs: expected a non-negative integer"),
                      ({"min_runs": 2.5}, "min_runs: expected a non-negative integer"),
                      ({"compute_units": "cpuAndGPU"}, "compute_units 'cpuAndGPU' is not available for onnx here"),
                      ({"return_output": "yes"}, "return_output: expected true or false")):
        r = c.post("/v1/models/m0/run", json=body)
        assert r.status_code == 400 and r.json()["error"] == "bad_request" and msg in r.json()["message"], r.text
    assert c.delete("/v1/models/m1").json() == {"deleted": "m1"}
    assert c.delete("/v1/models/m1").status_code == 404


# ------------------------------------------------------------------------------------------------ fixtures
def _request_from(fx: dict, artifact: Artifact, name: str) -> tuple[str, str, dict, bytes | None]:
    req = fx["request"]
    path = req["path"].replace("{name}", name)
    body = req["body"]
    headers = {k: v for k, v in req["headers"].items() if k != "Authorization"}
    if body is None:
        return req["method"], path, headers, None
    if "zip" in body:
        entries = {}
        for member, v in body["zip"].items():
            if member == "manifest.json":
                v = dict(v)
                if v["format"] == "mlpackage":  # this companion runs ONNX: the same manifest for model.onnx
                    v.update(format="onnx", model="model.onnx")
                entries[member] = v
            elif member == "input.bin":
                entries[member] = artifact.input.astype("<f4").tobytes()
            elif member.startswith("model.mlpackage"):
                entries["model.onnx"] = artifact.path.read_bytes()
            else:
                entries[member] = v.encode() if isinstance(v, str) else v
        return req["method"], path, headers, zip_of(entries)
    if "raw" in body:
        return req["method"], path, headers, b"this is not a zip"
    if "oversized" in body:
        return req["method"], path, headers, b"\0" * 300_000
    return req["method"], path, headers, json.dumps(body).encode()


def test_reference_companion_answers_like_the_fixtures(server, artifact):
    fx = fixtures()
    assert {"info", "upload", "models", "run", "delete"} <= set(fx)
    c = http(server)
    order = ["info", "upload", "models", "run", "delete"] + sorted(k for k in fx if k.startswith("error_"))
    name = "k3_e1_8x16x16_8_s1-1f0c3a9b2d"
    for key in order:
        f = fx[key]
        want = f["response"]
        if key == "error_too_many_models":
            for i in range(3):
                c.put(f"/v1/models/fill{i}", content=zip_of(good_entries(artifact)))
        if key == "error_too_many_attempts":  # ten wrong tokens in a row lock the companion
            for _ in range(LOCKOUT_FAILURES):
                assert http(server, "wrong-token-1234567").get("/v1/info").status_code == 401
        if key == "error_run_failed":  # a model ONNX Runtime cannot load
            bad = good_entries(artifact) | {"model.onnx": b"not an onnx model"}
            assert c.put(f"/v1/models/{name}", content=zip_of(bad)).status_code == 201
        method, path, headers, content = _request_from(f, artifact, "nothere" if key == "error_not_found" else name)
        client = http(server, "wrong-token-123") if key == "error_unauthorized" else c
        r = client.request(method, path, headers=headers, content=content)
        assert r.status_code == want["status"], (key, r.text)
        got = r.json()
        if key.startswith("error_"):
            assert got["error"] == want["body"]["error"], key
            assert shape_of(got) == shape_of(want["body"]), key
        else:
            if key == "run":
                assert got["output"]["data"] and got["timings_us"]
            assert shape_of(got) == shape_of(want["body"]), key
        if key == "error_too_many_attempts":
            assert r.headers["retry-after"] == want["headers"]["Retry-After"]
            assert got == want["body"]
            server.lockout = Lockout()  # the lock-out passed
        if key == "error_run_failed":
            c.delete(f"/v1/models/{name}")
        if key == "error_too_many_models":
            for i in range(3):
                c.delete(f"/v1/models/fill{i}")
    # the messages that carry no per-request values are the documented ones
    assert http(server, None).get("/v1/info").json() == fx["error_unauthorized"]["response"]["body"]


def test_client_requests_match_the_fixtures(server, artifact):
    fx = fixtures()
    seen: list[httpx.Request] = []
    dev = CompanionDevice("ios", server.address, TOKEN, CompanionSettings())
    dev.client.http.event_hooks["request"].append(seen.append)
    with dev:
        dev.before_row(artifact.key)
        result = dev.measure(artifact, "onnxruntime", LOOP, 1)
    assert np.allclose(result.output, artifact.expected)
    kinds = []
    for req in seen:
        path = req.url.path
        kind = {("GET", "/v1/info"): "info", ("GET", "/v1/models"): "models"}.get((req.method, path))
        if kind is None:
            kind = {"PUT": "upload", "DELETE": "delete", "POST": "run"}[req.method]
        kinds.append(kind)
        want = fx[kind]["request"]
        assert req.method == want["method"]
        assert re.fullmatch(re.escape(want["path"]).replace(r"\{name\}", "[A-Za-z0-9._-]+"), path), path
        assert req.headers["authorization"] == f"Bearer {TOKEN}"
        for h, v in want["headers"].items():
            if h != "Authorization":
                assert req.headers[h.lower()] == v
        if kind == "run":
            assert shape_of(json.loads(req.content)) == shape_of(want["body"])
        if kind == "upload":
            with zipfile.ZipFile(io.BytesIO(req.content)) as zf:
                names = zf.namelist()
                m = json.loads(zf.read("manifest.json"))
            assert shape_of(m) == shape_of(want["body"]["zip"]["manifest.json"])
            assert m["input"] == {"file": "input.bin", "dtype": "float32", "shape": SHAPE}
            assert sorted(names) == ["input.bin", "manifest.json", "model.onnx"]
    assert kinds == ["info", "upload", "run", "delete"]  # (the first info came before the hook)


def test_mlpackage_folders_are_zipped_with_their_tree(tmp_path):
    pkg = tmp_path / "model.mlpackage"
    (pkg / "Data" / "com.apple.CoreML").mkdir(parents=True)
    (pkg / "Manifest.json").write_text("{}")
    (pkg / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(b"x")
    data = pack_model(pkg, "mlpackage", np.zeros(SHAPE, np.float32))
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert sorted(zf.namelist()) == ["input.bin", "manifest.json", "model.mlpackage/Data/com.apple.CoreML/model.mlmodel",
                                         "model.mlpackage/Manifest.json"]
        assert json.loads(zf.read("manifest.json")) == {**fixtures()["upload"]["request"]["body"]["zip"]["manifest.json"],
                                                        "input": {"file": "input.bin", "dtype": "float32", "shape": SHAPE}}
    m = unpack_model(data, tmp_path / "out", ("mlpackage",), Limits())
    assert m["format"] == "mlpackage" and (tmp_path / "out" / "model.mlpackage" / "Manifest.json").exists()


def _swift_source() -> str:
    files = sorted(SWIFT.rglob("*.swift"))
    assert files, "devices/ios has no Swift sources"
    return "\n".join(f.read_text() for f in files)


def _keys(v, out: set[str]) -> set[str]:
    if isinstance(v, dict):
        for k, x in v.items():
            out.add(k)
            _keys(x, out)
    elif isinstance(v, list):
        for x in v:
            _keys(x, out)
    return out


def test_swift_app_uses_the_fixtures_field_names_and_errors():
    src = _swift_source()
    keys: set[str] = set()
    codes: set[str] = set()
    for name, f in fixtures().items():
        body = f["request"]["body"]
        if isinstance(body, dict) and "zip" in body:
            _keys(body["zip"]["manifest.json"], keys)
        elif isinstance(body, dict) and not {"raw", "oversized"} & set(body):
            _keys(body, keys)
        _keys(f["response"]["body"], keys)
        if name.startswith("error_"):
            codes.add(f["response"]["body"]["error"])
        for path in (f["request"]["path"],):
            assert path.split("/{name}")[0].split("/..")[0] in src, path
    missing = [k for k in sorted(keys) if f'"{k}"' not in src and not re.search(rf"\b(let|var|case)\s+{k}\b", src)]
    assert not missing, f"Swift app lacks fields {missing}"
    assert not [c for c in sorted(codes) if f'"{c}"' not in src and not re.search(rf"\bcase\s+{c}\b", src)]
    assert UNAUTHORIZED_MESSAGE in src
    for units in ("cpuOnly", "cpuAndGPU", "cpuAndNeuralEngine", "all"):
        assert f'"{units}"' in src
    assert "_fbprof._tcp" in src


def test_protocol_doc_lists_every_endpoint_and_error():
    doc = (REPO / "docs" / "companion-protocol.md").read_text()
    for name, f in fixtures().items():
        if name.startswith("error_"):
            assert f"`{f['response']['body']['error']}`" in doc, name
        else:
            assert f"{f['request']['method']} {f['request']['path']}" in doc, name
    assert UNAUTHORIZED_MESSAGE in doc


# ------------------------------------------------------------------------------------------------ client
def test_measure_returns_stats_output_and_env(server, artifact):
    with CompanionDevice("ios", server.address, TOKEN) as dev:
        env = dev.before_row(artifact.key)
        res = dev.measure(artifact, "onnxruntime", LOOP, 1)
        assert http(server).get("/v1/models").json() == {"models": []}  # deleted after the row
    assert env == {"thermal": "unknown"}
    m = res.measurement
    assert m.status in (OK, UNSTABLE) and m.stats.n >= 5 and m.stats.median > 0 and m.attempts == 1
    assert res.env == {"compute_units": "all", "compute_units_used": "cpuOnly", "thermal_after": "unknown"}
    assert np.array_equal(res.output, artifact.expected)


def test_unsupported_backend_and_format(server, artifact):
    with CompanionDevice("ios", server.address, TOKEN) as dev:
        with pytest.raises(InputError, match="device ios cannot run backend 'coreml'; it runs: onnxruntime"):
            dev.check_backend("coreml")
        bad = Artifact(artifact.key, "onnx", artifact.path, artifact.input, artifact.expected)
        with pytest.raises(InputError):
            dev.measure(bad, "coreml", LOOP, 1)


def test_run_failure_is_a_row_failure_not_a_device_error(server, artifact, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    art = Artifact("k3_e1:8x16x16:8:s1", "onnx", broken, artifact.input, artifact.expected)
    with CompanionDevice("ios", server.address, TOKEN) as dev:
        with pytest.raises(MeasurementError, match=r"k3_e1:8x16x16:8:s1: the companion could not run it"):
            dev.measure(art, "onnxruntime", LOOP, 1)
        assert http(server).get("/v1/models").json() == {"models": []}
        dev.measure(artifact, "onnxruntime", LOOP, 1)  # the device still works


def test_capped_runs_are_invalid(server, artifact):
    cfg = LoopConfig(warmup_runs=0, warmup_min_s=0.0, min_runs=10_000, max_runs=10_000, min_time_s=0.0,
                     max_time_s=0.01, retries=0, target_sample_s=0.0)
    with CompanionDevice("ios", server.address, TOKEN) as dev:
        m = dev.measure(artifact, "onnxruntime", cfg, 1).measurement
    assert m.status == INVALID and m.notes[0].startswith("hit the cap after ")


def test_noisy_rows_are_measured_again_then_unstable(server, artifact):
    cfg = LoopConfig(warmup_runs=0, warmup_min_s=0.0, min_runs=5, min_time_s=0.0, retries=2, retry_pause_s=7.0,
                     cv_threshold=0.0, target_sample_s=0.0)  # every row counts as noisy
    pauses: list[float] = []
    retries: list[int] = []
    with CompanionDevice("ios", server.address, TOKEN, sleep=pauses.append) as dev:
        m = dev.measure(artifact, "onnxruntime", cfg, 1, on_retry=lambda a, cv: retries.append(a)).measurement
    assert m.status == UNSTABLE and m.attempts == 3 and pauses == [7.0, 7.0] and retries == [1, 2]
    assert m.notes == [f"cv {m.stats.cv:.3f} >= 0.0 after 3 attempts"]


def test_thermal_gate_waits_until_cool(tmp_path, artifact):
    state = {"now": "serious"}
    polls: list[float] = []

    def sleep(s: float) -> None:
        polls.append(s)
        if len(polls) == 2:
            state["now"] = "fair"

    with CompanionServer(TOKEN, thermal=lambda: state["now"], formats=("onnx",)).start() as srv:
        settings = CompanionSettings(thermal_max="fair", thermal_poll_s=10, thermal_wait_s=60)
        with CompanionDevice("iphonex", srv.address, TOKEN, settings, sleep=sleep) as dev:
            assert dev.before_row("k") == {"thermal": "fair", "thermal_wait_s": "20"}
            assert polls == [10, 10]
            state["now"] = "critical"
            with pytest.raises(DeviceError, match=r"iphonex at 127\.0\.0\.1:\d+ stayed critical for 60 s before k") as e:
                dev.before_row("k")
            assert "finished rows are kept" in str(e.value)
            assert polls == [10, 10] + [10] * 6


def test_retries_with_back_off_then_device_error():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    pauses: list[float] = []
    client = CompanionClient(f"127.0.0.1:{port}", TOKEN, CompanionSettings(retries=3, backoff_s=0.25), pauses.append)
    with pytest.raises(DeviceError, match=rf"the companion at 127\.0\.0\.1:{port} did not answer \(info: ConnectError.*after 4 attempts") as e:
        client.info()
    assert "run the same command again to resume" in str(e.value)
    assert pauses == [0.25, 0.5, 1.0]


def test_settings_and_addresses():
    s = CompanionSettings.from_sources({"compute_units": "all"}, {"retries": "5", "check_output": "false",
                                                                  "timeout_s": "2.5"})
    assert (s.retries, s.check_output, s.timeout_s) == (5, False, 2.5)
    with pytest.raises(InputError, match="unknown companion setting 'runner'"):
        CompanionSettings.from_sources({"runner": "python"})
    with pytest.raises(InputError, match="compute_units 'gpu': expected one of cpuOnly, cpuAndGPU"):
        CompanionSettings.from_sources({"compute_units": "gpu"})
    with pytest.raises(InputError, match="companion: device setting retries='many': expected int"):
        CompanionSettings.from_sources({"retries": "many"})
    assert parse_address("10.0.0.5") == ("10.0.0.5", 8765)
    assert parse_address("phone.local:9000") == ("phone.local", 9000)
    assert parse_address("[fe80::1]:9000") == ("fe80::1", 9000)
    with pytest.raises(InputError, match="port must be 1-65535"):
        parse_address("host:99999")


def test_profiles():
    profiles = load_profiles()
    x, ios = profiles["iphonex"], profiles["ios"]
    assert (x.transport, x.backend, x.settings["compute_units"]) == ("companion", "coreml", "all")
    assert (ios.transport, ios.backend) == ("companion", "coreml")
    assert resolve_device("ios:10.0.0.5:8765", "iphonex", profiles) == (x, "10.0.0.5:8765")
    CompanionSettings.from_sources({k: v for k, v in x.settings.items()})


def test_bonjour_discovery_finds_the_reference_companion():
    pytest.importorskip("zeroconf", reason="the optional mdns extra is not installed")
    import secrets

    from fbprof.companion.phone_server import advertise
    from fbprof.devices.companion_client import discover

    label = f"fbprof test {secrets.token_hex(4)}"
    with CompanionServer(TOKEN, formats=("onnx",)).start() as srv:
        stop = advertise(srv, label, interfaces=["127.0.0.1"])
        try:
            found = dict(discover(2.0, interfaces=["127.0.0.1"]))
        finally:
            stop()
    assert found.get(f"{label}._fbprof._tcp.local.") == srv.address


def test_compute_units_the_companion_lacks_are_refused_up_front(server):
    with CompanionDevice("ios", server.address, TOKEN, CompanionSettings(compute_units="cpuAndGPU")) as dev:
        with pytest.raises(InputError, match=r"compute units 'cpuAndGPU' are not available for onnxruntime on ios at "
                                             r"127\.0\.0\.1:\d+ \(available: cpuOnly, all\)"):
            dev.check_backend("onnxruntime")


def test_a_model_lost_by_a_restarted_companion_is_uploaded_again(server, artifact):
    with CompanionDevice("ios", server.address, TOKEN) as dev:
        name = model_name(artifact.key)
        data = pack_model(artifact.path, "onnx", artifact.input)
        dev._upload(name, data, artifact.key)
        server.delete(name)  # what a restart does to the companion's models
        res = dev._run(name, data, artifact.key, dev.run_request(LOOP, False), 30)
        assert len(res["timings_us"]) >= 5 and "output" not in res
        assert [m["name"] for m in http(server).get("/v1/models").json()["models"]] == [name]
    assert http(server).get("/v1/models").json() == {"models": []}  # close() deleted what was left
