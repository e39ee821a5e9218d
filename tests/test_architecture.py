"""The layout shows the data flow: no module of fbprof imports against it (docs/architecture.md).

Every import statement in fbprof/ counts, at module level or inside a function: a lazy import is
still a dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "fbprof"

#: room -> rank; a module may import its own room and rooms of a lower rank only
RANKS = {"ground": 0, "space": 1, "lut": 2, "backends": 3, "companion": 4, "devices": 5, "profiler": 6,
         "verify": 7, "search": 7, "cli": 8, "api": 9}
GROUND = {"__init__", "errors", "fileio", "loop", "artifact", "spec"}
SPACE = {"space", "build"}
#: modules copied to devices and run there alone: standard library only at import time
STANDALONE = ["loop.py", "backends/onnxruntime.py", "backends/litert.py", "devices/adb_remote_runner.py"]


def room(module: str) -> str:
    parts = module.split(".")
    assert parts[0] == "fbprof", module
    if len(parts) == 1:
        return "ground"
    head = parts[1]
    if head in GROUND:
        return "ground"
    if head in SPACE:
        return "space"
    if head in RANKS:
        return head
    raise AssertionError(f"{module}: not in any room of docs/architecture.md")


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod == "fbprof":  # from fbprof import X: X is a module or a name of fbprof/__init__
                out += [(node.lineno, f"fbprof.{a.name}" if (PKG / a.name).exists() or (PKG / f"{a.name}.py").exists()
                         else "fbprof") for a in node.names]
            else:
                out.append((node.lineno, mod))
    return out


def backward_imports() -> list[str]:
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        src = module_name(path)
        for line, target in imports_of(path):
            if not (target == "fbprof" or target.startswith("fbprof.")):
                continue
            a, b = room(src), room(target)
            if a != b and RANKS[b] >= RANKS[a]:
                bad.append(f"{path.relative_to(PKG.parent)}:{line}: {a} imports {b} ({target})")
    return bad


def test_no_import_runs_against_the_flow():
    assert backward_imports() == []


def test_the_walker_sees_a_backward_import(tmp_path, monkeypatch):
    # the check itself can fail: a lut module importing the profiler is reported
    fake = tmp_path / "fbprof"
    (fake / "lut").mkdir(parents=True)
    (fake / "profiler").mkdir()
    (fake / "lut" / "table.py").write_text("def f():\n    from fbprof.profiler.measure import measure_lut\n")
    (fake / "profiler" / "measure.py").write_text("from ..lut import table\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG", fake)
    assert backward_imports() == ["fbprof/lut/table.py:2: lut imports profiler (fbprof.profiler.measure)"]


@pytest.mark.parametrize("rel", STANDALONE)
def test_modules_pushed_to_devices_need_only_the_standard_library_at_import(rel):
    tree = ast.parse((PKG / rel).read_text(encoding="utf-8"))
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
    names += [n.module for n in top if isinstance(n, ast.ImportFrom) and n.module]
    assert [m for m in names if m.split(".")[0] not in sys.stdlib_module_names and m != "__future__"] == []


def test_help_imports_no_heavy_library():
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom fbprof.cli import app\n"
            "r = CliRunner().invoke(app, ['--help'])\nassert r.exit_code == 0, r.output\nassert 'measure' in r.output\n"
            "heavy = ('numpy', 'torch', 'onnxruntime', 'ai_edge_litert', 'executorch', 'coremltools', 'scipy', "
            "'matplotlib', 'pandas', 'litert_torch')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


if __name__ == "__main__":  # python tests/test_architecture.py [PATH/TO/fbprof]: the picture, room -> room
    import collections

    if len(sys.argv) > 1:
        PKG = Path(sys.argv[1]).resolve()
    found = backward_imports()
    arrows = collections.Counter(line.split(": ", 1)[1].split(" (")[0] for line in found)
    for arrow, n in sorted(arrows.items()):
        print(f"{arrow}: {n} import{'s' if n != 1 else ''}")
    print(f"{len(arrows)} arrows run back up ({len(found)} imports)")
