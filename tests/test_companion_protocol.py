"""The protocol's edge cases against the reference companion (``fbprof companion serve``), byte for byte
over loopback sockets: request framing (Content-Length), bodies answered before they are read,
the wrong-token lock-out (with an injected clock), token rules, the listen backlog, archives whose
entries clash or whose sizes lie, run requests out of bounds, and the order of refusals. The Swift app
follows the same rules (devices/ios, checked in test_companion_swift.py)."""

from __future__ import annotations

import io
import json
import socket
import socketserver
import struct
import threading
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fbprof.companion.protocol import (LOCKOUT_BASE_S, LOCKOUT_FAILURES, MIN_TOKEN_CHARS, Limits, ProtocolError,
                                       parse_content_length)
from fbprof.companion.phone_server import CompanionServer, Lockout, new_token
from fbprof.devices.companion_client import CompanionClient, CompanionError, CompanionSettings
from fbprof.errors import DeviceError, InputError

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "companion"
TOKEN = "proto-token-0123456789"
SHAPE = [1, 2, 4, 4]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def server(tmp_path, clock):
    s = CompanionServer(TOKEN, "127.0.0.1", 0, Limits(max_upload_bytes=4 << 20, max_models=3), formats=("onnx",),
                        store_dir=tmp_path / "store", lockout=Lockout(clock=clock)).start()
    yield s
    s.close()


# ------------------------------------------------------------------------------------------------ raw HTTP
class Conn:
    """One keep-alive HTTP/1.1 connection written byte for byte."""

    def __init__(self, server: CompanionServer) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        self.buf = b""

    def send_head(self, method: str, path: str, headers: dict[str, str] | None = None, token: str | None = TOKEN) -> None:
        lines = [f"{method} {path} HTTP/1.1", "Host: companion"]
        if token is not None:
            lines.append(f"Authorization: Bearer {token}")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                token: str | None = TOKEN) -> tuple[int, dict[str, str], dict]:
        h = dict(headers or {})
        if body is not None and "Content-Length" not in h:
            h["Content-Length"] = str(len(body))
        self.send_head(method, path, h, token)
        if body:
            self.sock.sendall(body)
        return self.response()

    def _fill(self) -> bool:
        data = self.sock.recv(1 << 16)
        self.buf += data
        return bool(data)

    def response(self) -> tuple[int, dict[str, str], dict]:
        while b"\r\n\r\n" not in self.buf:
            assert self._fill(), f"the connection closed without an answer (got {self.buf!r})"
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
        n = int(headers["content-length"])
        while len(self.buf) < n:
            assert self._fill(), "the connection closed in the middle of an answer"
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, json.loads(body)

    def closed_cleanly(self) -> bool:
        """True when the companion closed with a FIN (end of stream), False when it reset the connection."""
        try:
            while self._fill():
                pass
        except ConnectionResetError:
            return False
        return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def conn(server):
    c = Conn(server)
    yield c
    c.close()


def zip_of(entries: list[tuple[str, bytes | str | dict]]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate names some tests write on purpose
        for name, data in entries:
            zf.writestr(name, json.dumps(data) if isinstance(data, dict) else data)
    return buf.getvalue()


def relu_onnx() -> bytes:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, SHAPE)
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, SHAPE)
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "relu", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model.SerializeToString()


def good_entries() -> list[tuple[str, bytes | str | dict]]:
    manifest = {"protocol": 1, "format": "onnx", "model": "model.onnx",
                "input": {"file": "input.bin", "dtype": "float32", "shape": SHAPE}}
    return [("manifest.json", manifest), ("input.bin", np.ones(SHAPE, "<f4").tobytes()), ("model.onnx", relu_onnx())]


# ------------------------------------------------------------------------------------------------ framing
@pytest.mark.parametrize("value", ["abc", "-1", "+5", " 1 2", "1e3", "0x10", "\xb2", "99999999999999999999"])
def test_a_content_length_that_is_not_a_number_gets_400(conn, value):
    status, headers, body = conn.request("PUT", "/v1/models/m", headers={"Content-Length": value})
    assert status == 400 and body["error"] == "bad_request" and "is not a number of bytes" in body["message"]
    assert headers["connection"] == "close"  # the end of the body is unknown: nothing more can be read


def test_two_content_lengths_that_disagree_get_400(conn):
    conn.send_head("POST", "/v1/models/m/run", {"Content-Length": "2", "content-length": "3"})
    conn.sock.sendall(b"{}")
    status, _, body = conn.response()
    assert status == 400 and body["error"] == "bad_request"


def test_parse_content_length():
    assert parse_content_length([]) is None
    assert parse_content_length(["0"]) == 0
    assert parse_content_length([" 12 ", "12"]) == 12
    for bad in (["-1"], ["1", "2"], [""], ["١٢"]):
        with pytest.raises(ProtocolError) as e:
            parse_content_length(bad)
        assert e.value.status == 400


@pytest.mark.parametrize("method,path", [("GET", "/v1/info"), ("GET", "/v1/models"), ("DELETE", "/v1/models/m")])
def test_a_get_or_delete_announcing_a_huge_body_is_refused_from_its_head(conn, method, path):
    conn.send_head(method, path, {"Content-Length": str(10 << 30)})  # 10 GB announced, none sent
    status, headers, body = conn.response()
    assert status == 413 and body == {"error": "too_large",
                                      "message": f"request body of {10 << 30} bytes is over the limit of 65536 bytes"}
    assert headers["connection"] == "close"


def test_a_small_body_on_a_get_is_read_so_the_connection_stays_in_step(conn):
    status, _, body = conn.request("GET", "/v1/info", body=b"GET /v1/nothing HTTP/1.1\r\n\r\n")
    assert status == 200 and body["protocol"] == 1
    status, _, body = conn.request("GET", "/v1/models")  # the same connection: the body was not a request
    assert status == 200 and body == {"models": []}


@pytest.mark.parametrize("method,path,want", [
    ("PUT", "/v1/models/..%2Fetc", (400, "bad_name")),
    ("PUT", "/v1/nothing", (404, "not_found")),
    ("POST", "/v1/models/m/nothing", (405, "bad_method")),
    ("PUT", "/v1/models/m", (411, "length_required")),
    ("POST", "/v1/models/m/run", (411, "length_required")),
])
def test_a_body_without_content_length_is_411_only_where_a_body_is_due(conn, method, path, want):
    conn.send_head(method, path)
    status, _, body = conn.response()
    assert (status, body["error"]) == want


def test_chunked_bodies_get_411(conn):
    conn.send_head("POST", "/v1/models/m/run", {"Transfer-Encoding": "chunked"})
    status, headers, body = conn.response()
    assert (status, body["error"], headers["connection"]) == (411, "length_required", "close")


# ------------------------------------------------------------------------------------------------ early answers
@pytest.mark.parametrize("case", ["wrong token", "over the JSON limit", "locked out"])
def test_an_answer_given_before_the_body_is_read_is_not_followed_by_a_reset(server, conn, clock, case):
    """The host sends the whole body before it reads: closing on unread bytes would reset the connection
    and lose the answer. The companion reads (and drops) the body first, then closes with a FIN."""
    body = b"x" * (1 << 20)  # 1 MiB: more than the socket buffers take without the companion reading
    path, token, want = "/v1/models/m/run", TOKEN, (413, "too_large")
    if case == "wrong token":
        token, want = "not-the-token-at-all", (401, "unauthorized")
    elif case == "locked out":
        for _ in range(LOCKOUT_FAILURES):
            server.lockout.failed()
        want = (429, "too_many_attempts")
    conn.send_head("POST", path, {"Content-Length": str(len(body))}, token)
    status, headers, answer = conn.response()  # answered from the head alone
    assert (status, answer["error"]) == want and headers["connection"] == "close"
    conn.sock.sendall(body)  # a client that sends its body anyway, then reads
    conn.sock.shutdown(socket.SHUT_WR)
    assert conn.closed_cleanly()


# ------------------------------------------------------------------------------------------------ tokens
def test_wrong_tokens_lock_every_request_out_with_a_growing_back_off(server, clock):
    fx = json.loads((FIXTURES / "error_too_many_attempts.json").read_text())["response"]
    c = Conn(server)
    try:
        for _ in range(LOCKOUT_FAILURES - 1):
            assert c.request("GET", "/v1/info", token="wrong-token-000000000")[0] == 401
        assert c.request("GET", "/v1/info")[0] == 200  # a right token resets the count
        for _ in range(LOCKOUT_FAILURES):
            assert c.request("GET", "/v1/info", token="wrong-token-000000000")[0] == 401
        status, headers, body = c.request("GET", "/v1/info")  # the right token, but locked out
        assert status == 429 == fx["status"] and body["error"] == fx["body"]["error"] == "too_many_attempts"
        assert set(body) == set(fx["body"])
        assert headers["retry-after"] == str(int(LOCKOUT_BASE_S))
        clock.now += LOCKOUT_BASE_S - 0.5
        assert c.request("GET", "/v1/info")[0] == 429  # still locked: not counted as a wrong token either
        clock.now += 0.5
        for _ in range(LOCKOUT_FAILURES):  # the next lock-out lasts twice as long
            assert c.request("GET", "/v1/info", token="wrong-token-000000000")[0] == 401
        status, headers, _ = c.request("GET", "/v1/info")
        assert status == 429 and headers["retry-after"] == str(int(2 * LOCKOUT_BASE_S))
        clock.now += 2 * LOCKOUT_BASE_S
        assert c.request("GET", "/v1/info")[0] == 200
    finally:
        c.close()


def test_the_client_reports_a_lock_out(server):
    for _ in range(LOCKOUT_FAILURES):
        server.lockout.failed()
    client = CompanionClient(server.address, TOKEN, CompanionSettings(retries=0))
    with pytest.raises(CompanionError, match=r"locked after too many wrong pairing tokens \(429 too_many_attempts.*"
                                             r"Retry-After 1 s\)") as e:
        client.info()
    assert e.value.status == 429
    client.close()


def test_lockout_back_off_is_capped():
    clock = FakeClock()
    lock = Lockout(failures=2, base_s=1.0, max_s=5.0, clock=clock)
    waits = []
    for _ in range(5):
        lock.failed()
        lock.failed()
        waits.append(lock.wait_s())
        clock.now += lock.wait_s()
    assert waits == [1.0, 2.0, 4.0, 5.0, 5.0]
    lock.succeeded()
    lock.failed()
    lock.failed()
    assert lock.wait_s() == 1.0


@pytest.mark.parametrize("token", ["123456", "K7QW2M9P", "x" * (MIN_TOKEN_CHARS - 1), "sixteen chars ok", "é" * 20])
def test_short_or_unprintable_tokens_are_refused(token):
    with pytest.raises(InputError, match="pairing token must"):
        CompanionServer(token, formats=("onnx",))


def test_generated_tokens_are_long_and_fresh():
    tokens = {new_token() for _ in range(50)}
    assert len(tokens) == 50 and all(len(t) >= MIN_TOKEN_CHARS for t in tokens)
    CompanionServer(next(iter(tokens)), formats=("onnx",)).close()


# ------------------------------------------------------------------------------------------------ a reset
class _ResettingCompanion(socketserver.ThreadingTCPServer):
    """A companion whose refusals get lost: it answers GET /v1/info (``info_status``) and resets every
    request with a body after reading its head, as a phone that closes on an unread body may."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, info_status: int, limits: Limits) -> None:
        self.info_status, self.limits, self.bodies = info_status, limits, 0
        super().__init__(("127.0.0.1", 0), _ResettingHandler)


class _ResettingHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        srv: _ResettingCompanion = self.server  # type: ignore[assignment]
        while True:
            line = self.rfile.readline()
            if not line:
                return
            method = line.split()[0].decode()
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
            if method != "GET":  # reset: SO_LINGER 0 turns the close into an RST
                srv.bodies += 1
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                return
            if srv.info_status == 200:
                body = json.dumps({"protocol": 1, "runtimes": [], "limits": srv.limits.to_dict()}).encode()
            else:
                body = json.dumps({"error": "unauthorized", "message": "missing or wrong pairing token"}).encode()
            self.wfile.write(f"HTTP/1.1 {srv.info_status} X\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


@pytest.mark.parametrize("case", ["wrong token", "too large", "neither"])
def test_a_reset_after_a_refusal_is_reported_as_that_refusal(case):
    srv = _ResettingCompanion(401 if case == "wrong token" else 200, Limits(max_upload_bytes=1000))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    pauses: list[float] = []
    client = CompanionClient(f"127.0.0.1:{srv.server_address[1]}", TOKEN, CompanionSettings(retries=2, backoff_s=0.1),
                             pauses.append)
    try:
        data = b"z" * (5000 if case != "neither" else 500)
        if case == "wrong token":
            with pytest.raises(CompanionError, match=r"refused the pairing token \(401: missing or wrong"):
                client.upload("m", data)
        elif case == "too large":
            with pytest.raises(CompanionError, match=r"refused upload of m \(413 too_large: request body of 5000 "
                                                     r"bytes is over the limit of 1000 bytes\)") as e:
                client.upload("m", data)
            assert e.value.status == 413
        else:  # the companion takes such a body: a network failure, retried, then "did not answer"
            with pytest.raises(DeviceError, match=r"did not answer \(upload of m: .*after 3 attempts"):
                client.upload("m", data)
            assert pauses == [0.1, 0.2]
        assert srv.bodies == (1 if case != "neither" else 3)  # a refusal is not retried
    finally:
        client.close()
        srv.shutdown()
        srv.server_close()


# ------------------------------------------------------------------------------------------------ backlog
def test_a_burst_of_100_clients_is_queued_not_dropped():
    """With the stdlib's backlog of 5, connections past the 6th wait for SYN retransmits (1 s, 3 s, ...
    31 s) while the companion is busy. The companion here accepts nothing at all: every connection must
    still complete from the kernel's queue. (The socket timeout only bounds a failure.)"""
    srv = CompanionServer(TOKEN, formats=("onnx",))  # not started: nothing accepts
    socks: list[socket.socket] = []
    try:
        assert srv.httpd.request_queue_size >= 128
        for _ in range(100):
            socks.append(socket.create_connection(("127.0.0.1", srv.port), timeout=20))
    finally:
        for s in socks:
            s.close()
        srv.close()
    assert len(socks) == 100


# ------------------------------------------------------------------------------------------------ archives
@pytest.mark.parametrize("extra,message", [
    ([("input.bin", b"\0" * 4)], "duplicate entry in archive: 'input.bin'"),
    ([("./input.bin", b"\0" * 4)], "duplicate entry in archive: './input.bin'"),
    ([("model.onnx/x", b"y")], "entry 'model.onnx' is both a file and a folder in the archive"),
])
def test_archives_whose_entries_clash_are_a_bad_archive(server, conn, extra, message):
    status, _, body = conn.request("PUT", "/v1/models/m", body=zip_of(good_entries() + extra))
    assert (status, body) == (400, {"error": "bad_archive", "message": message})
    assert conn.request("GET", "/v1/models")[2] == {"models": []}


def _lie_about_size(data: bytes, member: str, size: int) -> bytes:
    """The zip with ``member``'s uncompressed size rewritten to ``size`` in its local and central headers."""
    b = bytearray(data)
    name = member.encode()
    for sig, size_at, name_len_at, name_at in ((b"PK\x03\x04", 22, 26, 30), (b"PK\x01\x02", 24, 28, 46)):
        i = b.find(sig)
        while i >= 0:
            n = struct.unpack_from("<H", b, i + name_len_at)[0]
            if bytes(b[i + name_at:i + name_at + n]) == name:
                struct.pack_into("<I", b, i + size_at, size)
            i = b.find(sig, i + 4)
    return bytes(b)


def test_an_archive_whose_sizes_lie_is_a_bad_archive_and_never_written_past_its_size(server, conn, tmp_path):
    real = b"\0" * (2 << 20)  # 2 MiB of zeros, declared as 1 KiB: passes the directory check
    data = _lie_about_size(zip_of(good_entries() + [("padding.bin", real)]), "padding.bin", 1024)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.getinfo("padding.bin").file_size == 1024
    status, _, body = conn.request("PUT", "/v1/models/m", body=data)
    assert status == 400 and body["error"] == "bad_archive" and "padding.bin" in body["message"], body
    assert not [p for p in (tmp_path / "store").rglob("*") if p.is_file()]  # nothing left behind


# ------------------------------------------------------------------------------------------------ run requests
@pytest.mark.parametrize("fields,message", [
    ({"min_runs": 0}, "need 1 <= min_runs <= max_runs"),
    ({"target_sample_s": 1e300}, "target_sample_s 1e+300 is over max_time_s 10.0"),
    ({"target_sample_s": 50.0, "max_time_s": 20.0}, "target_sample_s 50.0 is over max_time_s 20.0"),
])
def test_run_requests_out_of_bounds_are_400(server, conn, fields, message):
    assert conn.request("PUT", "/v1/models/m", body=zip_of(good_entries()))[0] == 201
    status, _, body = conn.request("POST", "/v1/models/m/run", body=json.dumps(fields).encode())
    assert status == 400 and body["error"] == "bad_request" and message in body["message"], body


def test_a_shape_whose_product_overflows_64_bits_is_too_large_not_a_crash(server, conn):
    entries = good_entries()
    entries[0] = ("manifest.json", {**entries[0][1], "input": {"file": "input.bin", "dtype": "float32",
                                                              "shape": [2 ** 62, 2 ** 62, 4]}})
    status, _, body = conn.request("PUT", "/v1/models/m", body=zip_of(entries))
    assert status == 413 and body["error"] == "too_large" and "elements (limit 16777216)" in body["message"], body


# ------------------------------------------------------------------------------------------------ compute units
def test_an_iphone_x_reports_what_its_compute_units_run_on_and_the_header_records_it(server, monkeypatch):
    """The app's info on an A11 (the fixture): no cpuAndNeuralEngine, and all runs on CPU and GPU."""
    from fbprof.devices.companion_client import CompanionDevice
    from fbprof.errors import InputError as _InputError

    iphone_x = json.loads((FIXTURES / "info.json").read_text())["response"]["body"]["runtimes"]
    assert iphone_x[0]["compute_units_used"]["all"] == "cpuAndGPU"
    monkeypatch.setattr(server, "runtimes", lambda: iphone_x)
    with CompanionDevice("iphonex", server.address, TOKEN) as dev:
        fp = dev.fingerprint("coreml", 1)
        assert fp["runtime"] == "Core ML (iOS 16.7.8), compute units all (runs as cpuAndGPU)"
        assert (fp["compute_units"], fp["compute_units_used"]) == ("all", "cpuAndGPU")
    ane = CompanionSettings(compute_units="cpuAndNeuralEngine")
    with CompanionDevice("iphonex", server.address, TOKEN, ane) as dev:
        with pytest.raises(_InputError, match=r"compute units 'cpuAndNeuralEngine' are not available for coreml .*"
                                              r"\(available: cpuOnly, cpuAndGPU, all\)"):
            dev.check_backend("coreml")


def test_the_reference_reports_that_onnx_runs_on_the_cpu(server, conn):
    rt = conn.request("GET", "/v1/info")[2]["runtimes"]
    assert rt == [{"format": "onnx", "runtime": rt[0]["runtime"], "compute_units": ["cpuOnly", "all"],
                   "compute_units_used": {"cpuOnly": "cpuOnly", "all": "cpuOnly"}}]
    assert conn.request("PUT", "/v1/models/m", body=zip_of(good_entries()))[0] == 201
    req = {"compute_units": "all", "min_runs": 1, "warmup_runs": 0, "warmup_min_s": 0, "min_time_s": 0,
           "target_sample_s": 0}
    status, _, body = conn.request("POST", "/v1/models/m/run", body=json.dumps(req).encode())
    assert status == 200 and (body["compute_units"], body["compute_units_used"]) == ("all", "cpuOnly")
