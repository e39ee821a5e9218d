"""What can be checked of the iPhone app (devices/ios) without Xcode: every Swift file parses with a real
Swift grammar (tree-sitter-swift, from the ``test`` extra), and the app's constants and defaults are the
reference companion's (loop defaults, limits, token rules, lock-out, compute units, fixed messages).
Type checking and linking still need Xcode on a Mac (devices/ios/README.md says what was checked)."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import pytest

from fbprof.companion.protocol import (COMPUTE_UNITS, LOCKOUT_BASE_S, LOCKOUT_FAILURES, LOCKOUT_MAX_S, LOOP_FIELDS,
                                       MIN_TOKEN_CHARS, UNAUTHORIZED_MESSAGE, Limits)
from fbprof.loop import LoopConfig

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "devices" / "ios" / "FbprofCompanion"
FIXTURES = REPO / "tests" / "fixtures" / "companion"
SWIFT_FILES = sorted(APP.glob("*.swift"))


def _parser():
    try:
        import tree_sitter
        import tree_sitter_swift
    except ImportError as e:  # never a silent skip: CI installs the test extra, which has both
        pytest.fail(f"the Swift syntax check needs tree-sitter and tree-sitter-swift (pip install -e '.[test]'): {e}")
    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_swift.language()))


def syntax_errors(source: bytes) -> list[str]:
    """Every ERROR or MISSING node of the parse, as 'line:column: what'."""
    tree = _parser().parse(source)
    found: list[str] = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            line, col = node.start_point
            what = f"missing {node.type}" if node.is_missing else "cannot parse " + repr(
                source[node.start_byte:node.end_byte][:60].decode(errors="replace"))
            found.append(f"{line + 1}:{col + 1}: {what}")
        stack.extend(node.children)
    assert bool(found) == tree.root_node.has_error, "tree-sitter reported an error it did not mark"
    return sorted(found, key=lambda s: tuple(int(x) for x in s.split(":")[:2]))


def source() -> str:
    return "\n".join(p.read_text() for p in SWIFT_FILES)


def test_the_app_has_its_four_swift_files():
    assert [p.name for p in SWIFT_FILES] == ["Companion.swift", "FbprofCompanionApp.swift", "HTTPServer.swift",
                                             "Wire.swift"]


@pytest.mark.parametrize("path", SWIFT_FILES, ids=lambda p: p.name)
def test_every_swift_file_parses(path):
    errors = syntax_errors(path.read_bytes())
    assert not errors, f"{path.relative_to(REPO)}: " + "; ".join(errors[:10])


@pytest.mark.parametrize("snippet", [
    "func f( { let x = 1 }",  # unclosed parameter list
    "struct S { var a: Int = }",  # no value
    "let handler = { [weak self] in self?.go() ",  # unclosed closure
    "guard let x = y { return }",  # guard without else
    "switch x { case .a: return 1 case }",
    "if x == 1 { print(x) } else { ",
])
def test_the_syntax_check_catches_broken_swift(snippet):
    assert syntax_errors(snippet.encode())


def test_the_syntax_check_passes_good_swift():
    good = b"""
    import Foundation
    final class A { private var n = 0; func f(_ x: Int?) -> Int { guard let x else { return 0 }; return x + n } }
    let t = Task { @MainActor [weak a = A()] in a?.f(1) }
    """
    assert syntax_errors(good) == []


# ------------------------------------------------------------------------------------------------ shared values
def _struct_body(src: str, name: str) -> str:
    m = re.search(rf"\bstruct {name}\b[^{{]*\{{", src)
    assert m, f"no struct {name} in the app"
    depth, i = 1, m.end()
    while depth:
        depth += {"{": 1, "}": -1}.get(src[i], 0)
        i += 1
    return src[m.end():i - 1]


def _swift_number(text: str) -> float:
    text = text.replace("_", "")
    if "<<" in text:
        a, b = text.split("<<")
        return int(a) << int(b)
    return float(text)


def _defaults(src: str, struct: str) -> dict[str, float]:
    body = _struct_body(src, struct)
    return {m.group(1): _swift_number(m.group(2))
            for m in re.finditer(r"^\s*var (\w+) = ([0-9_.]+(?: << [0-9]+)?)\s*$", body, re.M)}


def test_run_request_defaults_are_the_loops():
    got = _defaults(source(), "RunRequest")
    want = {k: getattr(LoopConfig(), k) for k in LOOP_FIELDS}
    assert got == pytest.approx(want), "the app's run-request defaults differ from fbprof.loop.LoopConfig"


def test_limits_are_the_reference_companions():
    got = _defaults(source(), "Limits")
    assert got == pytest.approx({f.name: getattr(Limits(), f.name) for f in fields(Limits)})


def test_token_lockout_and_compute_unit_constants_are_the_protocols():
    src = source()

    def const(name: str) -> str:
        m = re.search(rf"static let {name} = (.+)$", src, re.M)
        assert m, name
        return m.group(1).strip()

    assert int(const("minTokenChars")) == MIN_TOKEN_CHARS
    assert int(const("lockoutFailures")) == LOCKOUT_FAILURES
    assert float(const("lockoutBaseS")) == LOCKOUT_BASE_S and float(const("lockoutMaxS")) == LOCKOUT_MAX_S
    assert json.loads(const("computeUnits")) == list(COMPUTE_UNITS)
    assert json.loads(const("unauthorizedMessage")) == UNAUTHORIZED_MESSAGE
    # the token is made from Wire.minTokenChars characters of the system CSPRNG and kept in the Keychain
    app = (APP / "FbprofCompanionApp.swift").read_text()
    assert "(0..<Wire.minTokenChars).map" in app and "SystemRandomNumberGenerator()" in app
    assert "SecItemAdd" in app and not re.search(r"UserDefaults\.standard\.set\(\s*token", app)


def test_fixed_messages_are_the_fixtures():
    src = source()
    locked = json.loads((FIXTURES / "error_too_many_attempts.json").read_text())["response"]["body"]["message"]
    assert locked.replace("for 1 s", "for \\(seconds) s") in src
    assert '"send the body with a Content-Length header"' in src
