"""Search spaces and architectures as data, decoded in one place (torch-free).

A *space* file (YAML or JSON) gives the macro-architecture: stem, stages of searched layers with their
candidate blocks, head channels and classes. Resolving it at an input resolution and width multiplier
gives every layer's exact shape. An *architecture* file names a space and picks one block per searched
layer. Packaged spaces (``fbnet``, ``tiny``) and architectures (``fbnet-a``, ``fbnet-b``, ``fbnet-c``) live in
``fbprof/data`` and are read only when asked for.

Width rule: every channel count (stem, stages, head) is ``make_divisible(c * width, channel_divisor)``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fbprof.errors import FileFormatError, InputError
from fbprof.fileio import DATA_FILE_LIMIT, read_text_limited
from fbprof.spec import OpSpec, make_divisible, parse_block

__all__ = [
    "Layer",
    "Space",
    "Arch",
    "load_space",
    "SpaceTag",
    "format_space_tags",
    "parse_space_tags",
    "load_arch",
    "space_names",
    "arch_names",
    "read_data_file",
    "GridCell",
    "format_grid",
    "parse_grid",
    "ChannelLayer",
    "ChannelSpace",
    "ChannelArch",
    "decode_channel_space",
]

SCHEMA = 1
#: a space's name (in LUT headers): a word, never a path
_SPACE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_RESOLUTION = 100_000
MAX_WIDTH = 100.0


# --------------------------------------------------------------------------------------------------
# reading YAML/JSON with line numbers
class _LineLoader(yaml.SafeLoader):
    """SafeLoader with line numbers that refuses aliases (``*ref``): fbprof's files never need them, and
    nested aliases expand exponentially (a "billion laughs" file of 600 bytes fills gigabytes)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in fbprof files",
                                              event.start_mark)
        return super().compose_node(parent, index)


class _LinedDict(dict):
    """A dict that remembers the line (1-based) of each key."""

    lines: dict[str, int]


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> _LinedDict:
    d = _LinedDict(loader.construct_mapping(node, deep=True))
    d.lines = {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
    d.lines["__self__"] = node.start_mark.line + 1
    return d


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_data_file(path: str | Path, text: str | None = None) -> Any:
    """Read a YAML or JSON file; errors name the file and line."""
    path = Path(path)
    if text is None:
        text = read_text_limited(path, DATA_FILE_LIMIT, "data file")
    if len(text) > DATA_FILE_LIMIT:
        raise InputError(f"{path}: larger than {DATA_FILE_LIMIT // 1024} KiB; not a data file fbprof reads")
    try:
        if path.suffix == ".json":
            return json.loads(text, parse_constant=_no_constant)
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 - SafeLoader subclass
    except RecursionError:
        raise FileFormatError(str(path), [f"{path}:1: nested too deeply"]) from None
    except ValueError as e:  # JSONDecodeError, NaN/Infinity, a 5000-digit integer
        line = getattr(e, "lineno", 1)
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise FileFormatError(str(path), [f"{path}:{line}: invalid {kind}: {str(getattr(e, 'msg', e))[:200]}"]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise FileFormatError(str(path), [f"{path}:{line}: invalid YAML: {getattr(e, 'problem', e)}"]) from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number fbprof reads")


class _Fields:
    """Pulls typed fields out of a decoded mapping, collecting every problem with its line."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems

    def where(self, d: Any, key: str | None = None) -> str:
        lines = getattr(d, "lines", {})
        line = lines.get(key, lines.get("__self__", 1)) if key else lines.get("__self__", 1)
        return f"{self.path}:{line}"

    def bad(self, d: Any, key: str | None, what: str) -> None:
        self.problems.append(f"{self.where(d, key)}: {what}")

    def mapping(self, d: Any, ctx: str) -> dict:
        if not isinstance(d, dict):
            self.problems.append(f"{self.path}:{getattr(d, 'lines', {}).get('__self__', 1)}: {ctx} must be a mapping")
            return {}
        return d

    def pos_int(self, d: dict, key: str, ctx: str, default: int | None = None) -> int:
        v = d.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1_000_000:
            self.bad(d, key if key in d else None, f"{ctx}{key}: expected a positive integer (at most 1000000), got {str(v)[:40]!r}")
            return default or 1
        return v

    def unknown(self, d: dict, allowed: set[str], ctx: str) -> None:
        for k in d:
            if k not in allowed:
                self.bad(d, k, f"{ctx}unknown field {k!r} (allowed: {', '.join(sorted(allowed))})")


# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layer:
    """A searched layer of a resolved space."""

    name: str  # "L01".."L22"
    stage: int
    cin: int
    h: int
    w: int
    cout: int
    stride: int
    candidates: tuple[str, ...]

    def spec(self, block: str) -> OpSpec:
        if block not in self.candidates:
            raise InputError(f"layer {self.name}: {block!r} is not a candidate (candidates: {', '.join(self.candidates)})")
        return OpSpec(block, self.cin, self.h, self.w, self.cout, self.stride)


@dataclass(frozen=True)
class SpaceTag:
    """A space as LUT headers, verify and search name it: ``NAME@RESOLUTION/wWIDTH`` (``fbnet@224/w1``).

    :meth:`__str__` is the one writer and :meth:`parse` the one (strict) reader of this text."""

    name: str
    resolution: int
    width: float

    def __str__(self) -> str:
        return f"{self.name}@{self.resolution}/w{self.width:g}"

    @classmethod
    def parse(cls, text: str, where: str = "space") -> "SpaceTag":
        t = text.strip()
        name, at, rest = t.partition("@")
        res_s, sep, w_s = rest.partition("/w")
        problem = None
        if not at or not sep or not name or not res_s.isdigit() or not res_s.isascii():
            problem = "expected NAME@RESOLUTION/wWIDTH"
        elif not _SPACE_NAME_RE.fullmatch(name):
            problem = "a space name is a word of A-Z a-z 0-9 . _ - (not a path)"
        else:
            try:
                width = float(w_s)
            except ValueError:
                width = float("nan")
            res = int(res_s) if len(res_s) <= 6 else 0
            if not (0 < width <= MAX_WIDTH) or not w_s.replace(".", "", 1).isdigit() or not w_s.isascii():
                problem = f"width {w_s!r} is not a positive number"
            elif not 8 <= res <= 100_000:
                problem = f"resolution {res_s!r} out of range (8..100000)"
        if problem:
            raise InputError(f"{where}: cannot read space {text[:80]!r}: {problem}")
        return cls(name, res, width)

    def source(self, near: str | Path | None = None) -> str:
        """What names the space: the packaged name, else the file ``NAME.yaml`` (``.yml``, ``.json``) in the
        folder ``near`` (a LUT's folder). A name is never a path, so a LUT cannot make fbprof read any other file."""
        if not _SPACE_NAME_RE.fullmatch(self.name) or ".." in self.name:
            raise InputError(f"space {self.name[:80]!r}: not a space name")
        if self.name in _packaged("spaces") or near is None:
            return self.name
        for ext in (".yaml", ".yml", ".json"):
            f = Path(near) / f"{self.name}{ext}"
            if f.is_file():
                return str(f)
        raise InputError(f"unknown space {self.name!r}: not packaged ({', '.join(space_names())}) and no "
                         f"{self.name}.yaml next to the LUT in {near}", hint="give the space file with --space")

    def load(self, near: str | Path | None = None) -> "Space":
        """The space at this tag's resolution and width, found as :meth:`source` says."""
        return load_space(self.source(near), self.resolution, self.width)


def format_space_tags(tags) -> str:
    """The LUT header's ``spaces`` value: sorted unique tags, ``-`` for none."""
    return ", ".join(sorted({str(t) for t in tags})) or "-"


def parse_space_tags(value: str, where: str = "spaces") -> list[SpaceTag]:
    """Read a ``spaces`` value strictly (``-`` is none); a malformed entry is an InputError naming ``where``."""
    v = value.strip()
    if v in ("", "-"):
        return []
    return [SpaceTag.parse(part, where) for part in v.split(",")]


@dataclass(frozen=True)
class Space:
    """A search space resolved at one resolution and width: every layer's shape is known."""

    name: str
    source: str  # packaged name or file path
    resolution: int
    width: float
    num_classes: int
    in_channels: int
    stem: OpSpec
    layers: tuple[Layer, ...]
    head_channels: tuple[int, ...]  # first is the default
    raw: dict = field(repr=False, compare=False, default_factory=dict)

    @property
    def final_hw(self) -> tuple[int, int]:
        last = self.layers[-1] if self.layers else None
        if last is None:
            return self.stem.out_hw
        return OpSpec(last.candidates[0], last.cin, last.h, last.w, last.cout, last.stride).out_hw

    @property
    def last_channels(self) -> int:
        return self.layers[-1].cout if self.layers else self.stem.cout

    def tail_specs(self, head_channels: int | None = None) -> list[tuple[str, OpSpec]]:
        """Head conv, pool and FC for one head width."""
        hc = self.head_channels[0] if head_channels is None else head_channels
        if hc not in self.head_channels:
            raise InputError(
                f"space {self.name}: head channels {hc} not offered (offered: {', '.join(map(str, self.head_channels))})"
            )
        h, w = self.final_hw
        return [
            ("head", OpSpec("head", self.last_channels, h, w, hc, 1)),
            ("pool", OpSpec("pool", hc, h, w, hc, 1)),
            ("fc", OpSpec("fc", hc, 1, 1, self.num_classes, 1)),
        ]

    def all_specs(self) -> list[OpSpec]:
        """Every unique op a LUT for this space needs (identity skips excluded), sorted by key."""
        specs = {self.stem}
        for layer in self.layers:
            for block in layer.candidates:
                s = layer.spec(block)
                if not s.is_identity:
                    specs.add(s)
        for hc in self.head_channels:
            specs.update(s for _, s in self.tail_specs(hc))
        return sorted(specs, key=lambda s: s.key)

    def params(self) -> dict[str, Any]:
        return {"space": self.name, "resolution": self.resolution, "width": self.width}

    @property
    def tag(self) -> SpaceTag:
        return SpaceTag(self.name, self.resolution, self.width)

    def arch(self, blocks: list[str] | tuple[str, ...], head_channels: int | None = None, name: str = "arch") -> "Arch":
        if len(blocks) != len(self.layers):
            raise InputError(f"arch {name}: {len(blocks)} blocks given, space {self.name} has {len(self.layers)} searched layers")
        for layer, b in zip(self.layers, blocks):
            layer.spec(b)  # validates
        hc = self.head_channels[0] if head_channels is None else head_channels
        self.tail_specs(hc)
        return Arch(name=name, space=self, blocks=tuple(blocks), head_channels=hc)


class _OpTotals:
    """MACs and params of an architecture: sums over its ``ops()``."""

    def macs(self) -> int:
        return sum(s.macs() for _, s in self.ops())

    def params(self) -> int:
        return sum(s.params() for _, s in self.ops())


@dataclass(frozen=True)
class Arch(_OpTotals):
    """One architecture: a block per searched layer of a resolved space."""

    name: str
    space: Space
    blocks: tuple[str, ...]
    head_channels: int

    def ops(self) -> list[tuple[str, OpSpec]]:
        """(layer name, op) for every layer in order, identity skips included."""
        out: list[tuple[str, OpSpec]] = [("stem", self.space.stem)]
        out += [(layer.name, layer.spec(b)) for layer, b in zip(self.space.layers, self.blocks)]
        out += self.space.tail_specs(self.head_channels)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "name": self.name,
            "space": self.space.source,
            "resolution": self.space.resolution,
            "width": self.space.width,
            "head_channels": self.head_channels,
            "blocks": list(self.blocks),
        }

    def dump(self, path: str | Path) -> None:
        from fbprof.fileio import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


# --------------------------------------------------------------------------------------------------
def _packaged(kind: str) -> dict[str, Any]:
    root = resources.files("fbprof") / "data" / kind
    return {p.name.rsplit(".", 1)[0]: p for p in root.iterdir() if p.name.endswith((".yaml", ".yml", ".json"))}


def space_names() -> list[str]:
    return sorted(_packaged("spaces"))


def arch_names() -> list[str]:
    return sorted(_packaged("archs"))


def _looks_like_path(s: str) -> bool:
    return "/" in s or s.endswith((".yaml", ".yml", ".json")) or Path(s).exists()


def _read_named(kind: str, name_or_path: str | Path) -> tuple[str, Path, Any]:
    s = str(name_or_path)
    if _looks_like_path(s):
        p = Path(s)
        return str(p), p, read_data_file(p)
    found = _packaged(kind)
    if s not in found:
        what = kind[:-1]
        raise InputError(f"unknown {what} {s!r}; known {what}s: {', '.join(sorted(found))} (or give a .yaml/.json file)")
    res = found[s]
    return s, Path(f"<fbprof>/{kind}/{res.name}"), read_data_file(Path(res.name), res.read_text(encoding="utf-8"))


_SPACE_FIELDS = {
    "schema", "name", "description", "resolution", "width", "channel_divisor", "in_channels",
    "num_classes", "stem", "stages", "candidates", "head",
}


def load_space(name_or_path: str | Path = "fbnet", resolution: int | None = None, width: float | None = None) -> Space:
    """Load a packaged space by name, or a space file, and resolve it at ``resolution`` and ``width``."""
    source, path, data = _read_named("spaces", name_or_path)
    if isinstance(data, dict) and data.get("kind") == "channels":  # FBNetV2-style: widths and resolution searched
        return decode_channel_space(data, str(path), source, resolution, width)  # type: ignore[return-value]
    return decode_space(data, str(path), source, resolution, width)


def decode_space(data: Any, path: str, source: str, resolution: int | None = None, width: float | None = None) -> Space:
    problems: list[str] = []
    f = _Fields(path, problems)
    d = f.mapping(data, "a space file")
    if not d:
        raise FileFormatError(path, problems or [f"{path}:1: empty space file"])
    f.unknown(d, _SPACE_FIELDS, "")
    if d.get("schema", SCHEMA) != SCHEMA:
        f.bad(d, "schema", f"unsupported schema {d.get('schema')!r} (this fbprof reads schema {SCHEMA})")
    name = d.get("name") or Path(path).stem
    if not isinstance(name, str) or not _SPACE_NAME_RE.fullmatch(name):
        f.bad(d, "name" if "name" in d else None, f"name: {str(name)[:80]!r} is not a space name "
              "(1-64 characters of A-Z a-z 0-9 . _ -)")
        name = "space"
    if resolution is not None and (isinstance(resolution, bool) or not isinstance(resolution, int)):
        raise InputError(f"resolution {resolution!r}: expected an integer")
    res = resolution if resolution is not None else f.pos_int(d, "resolution", "", 224)
    if resolution is not None and resolution < 8:
        raise InputError(f"resolution {resolution} is too small (at least 8)")
    if res > MAX_RESOLUTION:
        if resolution is not None:
            raise InputError(f"resolution {resolution} is too large (at most {MAX_RESOLUTION})")
        f.bad(d, "resolution", f"resolution: {res} is too large (at most {MAX_RESOLUTION})")
        res = 224
    wmul = width if width is not None else d.get("width", 1.0)
    if isinstance(wmul, bool) or not isinstance(wmul, (int, float)) or not math.isfinite(wmul) \
            or not 0 < wmul <= MAX_WIDTH:
        if width is not None:
            raise InputError(f"width multiplier must be a number in (0, {MAX_WIDTH:g}], got {width!r}")
        f.bad(d, "width", f"width: expected a number in (0, {MAX_WIDTH:g}], got {str(wmul)[:40]!r}")
        wmul = 1.0
    wmul = float(wmul)
    divisor = f.pos_int(d, "channel_divisor", "", 8)
    in_ch = f.pos_int(d, "in_channels", "", 3)
    classes = f.pos_int(d, "num_classes", "", 1000)

    def ch(c: int) -> int:
        return c if wmul == 1.0 else make_divisible(c * wmul, divisor)

    default_cands = d.get("candidates")

    def check_cands(cands: Any, where: dict, key: str) -> tuple[str, ...]:
        if not isinstance(cands, list) or not cands or not all(isinstance(c, str) for c in cands):
            f.bad(where, key, f"{key}: expected a non-empty list of block names")
            return ()
        for c in cands:
            try:
                if parse_block(c).kind not in ("ir", "skip"):
                    f.bad(where, key, f"{key}: {c!r} cannot be a searched candidate")
            except InputError as e:
                f.bad(where, key, f"{key}: {e}")
        if len(set(cands)) != len(cands):
            f.bad(where, key, f"{key}: duplicate candidates")
        return tuple(cands)

    stem_d = f.mapping(d.get("stem", {}), "stem")
    f.unknown(stem_d, {"channels", "stride"}, "stem.")
    stem_c = ch(f.pos_int(stem_d, "channels", "stem.", 16))
    stem_s = f.pos_int(stem_d, "stride", "stem.", 2)
    stages = d.get("stages")
    if not isinstance(stages, list) or not stages:
        f.bad(d, "stages" if "stages" in d else None, "stages: expected a non-empty list")
        stages = []
    cands_top = check_cands(default_cands, d, "candidates") if default_cands is not None else None
    head_d = f.mapping(d.get("head", {"channels": [1984]}), "head")
    f.unknown(head_d, {"channels"}, "head.")
    hcs = head_d.get("channels", [1984])
    if isinstance(hcs, int):
        hcs = [hcs]
    if not isinstance(hcs, list) or not hcs or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in hcs):
        f.bad(head_d, "channels", "head.channels: expected a positive integer or a list of them")
        hcs = [1984]
    head_channels = tuple(dict.fromkeys(ch(c) for c in hcs))

    stem = None
    layers: list[Layer] = []
    try:
        stem = OpSpec("stem", in_ch, res, res, stem_c, stem_s)
    except InputError as e:
        problems.append(f"{f.where(stem_d)}: stem: {e}")
    if stem is not None:
        cin, (h, w) = stem.cout, stem.out_hw
        for si, st in enumerate(stages, 1):
            st = f.mapping(st, f"stages[{si - 1}]")
            ctx = f"stages[{si - 1}]."
            f.unknown(st, {"channels", "repeats", "stride", "candidates"}, ctx)
            cout = ch(f.pos_int(st, "channels", ctx, 1))
            reps = f.pos_int(st, "repeats", ctx, 1)
            stride = f.pos_int(st, "stride", ctx, 1)
            if "candidates" in st:
                cands = check_cands(st["candidates"], st, "candidates")
            elif cands_top is not None:
                cands = cands_top
            else:
                f.bad(st, None, f"{ctx[:-1]}: no candidates (give candidates at the top or per stage)")
                cands = ()
            if len(layers) + reps > 1000:
                f.bad(st, "repeats", f"{ctx}repeats: more than 1000 searched layers in all")
                break
            for r in range(reps):
                s = stride if r == 0 else 1
                if cands:
                    layer = Layer(f"L{len(layers) + 1:02d}", si, cin, h, w, cout, s, cands)
                    try:
                        ops = [layer.spec(c) for c in cands]
                        h, w = ops[0].out_hw
                    except InputError as e:
                        f.bad(st, None, f"{ctx[:-1]} layer {r}: {e}")
                        break
                    layers.append(layer)
                cin = cout
    if problems:
        raise FileFormatError(path, problems)
    assert stem is not None
    return Space(name, source, res, wmul, classes, in_ch, stem, tuple(layers), head_channels, raw=dict(d))


_ARCH_FIELDS = {"schema", "name", "space", "resolution", "width", "head_channels", "blocks", "description", "source",
                "channels", "stem_channels"}


def load_arch(name_or_path: str | Path, resolution: int | None = None, width: float | None = None) -> Arch:
    """Load a packaged architecture (``fbnet-b``) or an architecture file."""
    source, path, data = _read_named("archs", name_or_path)
    problems: list[str] = []
    f = _Fields(str(path), problems)
    d = f.mapping(data, "an architecture file")
    if not d:
        raise FileFormatError(str(path), problems or [f"{path}:1: empty architecture file"])
    f.unknown(d, _ARCH_FIELDS, "")
    blocks = d.get("blocks")
    if not isinstance(blocks, list) or not all(isinstance(b, str) for b in blocks):
        f.bad(d, "blocks" if "blocks" in d else None, "blocks: expected a list of block names, one per searched layer")
    space_ref = d.get("space", "fbnet")
    if not isinstance(space_ref, str):
        f.bad(d, "space", "space: expected a space name or file path")
    if problems:
        raise FileFormatError(str(path), problems)
    if _looks_like_path(space_ref) and not Path(space_ref).is_absolute() and not str(path).startswith("<fbprof>"):
        rel = Path(path).parent / space_ref
        if rel.exists():
            space_ref = str(rel)
    res = resolution if resolution is not None else d.get("resolution")
    wid = width if width is not None else d.get("width")
    if resolution is None and res is not None and (isinstance(res, bool) or not isinstance(res, int)):
        raise FileFormatError(str(path), [f"{f.where(d, 'resolution')}: resolution: expected an integer, got {str(res)[:40]!r}"])
    if width is None and wid is not None and (isinstance(wid, bool) or not isinstance(wid, (int, float))):
        raise FileFormatError(str(path), [f"{f.where(d, 'width')}: width: expected a number, got {str(wid)[:40]!r}"])
    hc = d.get("head_channels")
    if hc is not None and (isinstance(hc, bool) or not isinstance(hc, int)):
        raise FileFormatError(str(path), [f"{f.where(d, 'head_channels')}: head_channels: expected an integer"])
    space = load_space(space_ref, res, wid)
    if isinstance(space, ChannelSpace):
        import dataclasses

        if len(space.resolutions) > 1:
            space = dataclasses.replace(space, resolutions=space.resolutions[:1])
        return _channel_arch(d, f, str(path), space, str(d.get("name") or Path(source).stem))  # type: ignore[return-value]
    if "channels" in d or "stem_channels" in d:
        raise FileFormatError(str(path), [f"{f.where(d, 'channels' if 'channels' in d else 'stem_channels')}: "
                                          f"space {space.name} does not search widths (no channels per layer)"])
    try:
        return space.arch(blocks, d.get("head_channels"), name=str(d.get("name") or Path(source).stem))
    except InputError as e:
        raise FileFormatError(str(path), [f"{f.where(d, 'blocks')}: {e.message}"]) from None


# --------------------------------------------------------------------------------------------------
# Channel-searched spaces (FBNetV2): per layer a block *and* an output width, and a searched resolution.
@dataclass(frozen=True, order=True)
class GridCell:
    """Where a LUT measured a block family on a grid: input ``h x w``, stride, and the ``cin`` and ``cout``
    axes (sorted). Every interpolatable block of the LUT is measured at every (cin, cout) of the axes.

    Text form (the LUT header ``grid``, cells joined by ``; ``): ``56x56/s1 cin=16,24,32 cout=16,32``.
    :meth:`__str__` is the one writer and :meth:`parse` the one (strict) reader."""

    h: int
    w: int
    stride: int
    cin: tuple[int, ...]
    cout: tuple[int, ...]

    def __str__(self) -> str:
        return (f"{self.h}x{self.w}/s{self.stride} cin={','.join(map(str, self.cin))} "
                f"cout={','.join(map(str, self.cout))}")

    @classmethod
    def parse(cls, text: str, where: str = "grid") -> "GridCell":
        import re

        m = re.fullmatch(r"(\d{1,6})x(\d{1,6})/s(\d{1,3}) cin=(\d{1,6}(?:,\d{1,6})*) cout=(\d{1,6}(?:,\d{1,6})*)", text.strip())
        if not m:
            raise InputError(f"{where}: cannot read grid cell {text.strip()[:80]!r}: expected HxW/sS cin=A,B,... cout=C,D,...")
        h, w, s = int(m[1]), int(m[2]), int(m[3])
        cin = tuple(int(v) for v in m[4].split(","))
        cout = tuple(int(v) for v in m[5].split(","))
        for axis, vals in (("cin", cin), ("cout", cout)):
            if list(vals) != sorted(set(vals)) or vals[0] < 1:
                raise InputError(f"{where}: grid cell {text.strip()[:80]!r}: {axis} must be increasing positive integers")
        if min(h, w, s) < 1:
            raise InputError(f"{where}: grid cell {text.strip()[:80]!r}: sizes and stride must be >= 1")
        return cls(h, w, s, cin, cout)

    def contains(self, cin: float, cout: float, tol: float = 0.0) -> bool:
        """Whether the cell's axes cover (cin, cout), within ``tol`` channels of their ends."""
        return (self.cin[0] - tol <= cin <= self.cin[-1] + tol) and (self.cout[0] - tol <= cout <= self.cout[-1] + tol)


def format_grid(cells) -> str:
    """The LUT header's ``grid`` value: sorted unique cells, ``-`` for none."""
    return "; ".join(str(c) for c in sorted(set(cells))) or "-"


def parse_grid(value: str, where: str = "grid") -> list[GridCell]:
    """Read a ``grid`` value strictly (``-`` is none); a malformed cell is an InputError naming ``where``."""
    v = value.strip()
    if v in ("", "-"):
        return []
    return [GridCell.parse(part, where) for part in v.split(";")]


def _grid_axis(options: tuple[int, ...], points: int) -> tuple[int, ...]:
    """``points`` values of the sorted ``options``, evenly spaced by index, both ends included."""
    opts = sorted(set(options))
    if points >= len(opts):
        return tuple(opts)
    if points == 1:
        return (opts[0], opts[-1]) if len(opts) > 1 else tuple(opts)
    idx = {round(i * (len(opts) - 1) / (points - 1)) for i in range(points)}
    return tuple(opts[i] for i in sorted(idx))


@dataclass(frozen=True)
class ChannelLayer:
    """A searched layer of a channel space: a block from ``candidates`` and an output width from ``widths``."""

    name: str
    stage: int
    stride: int
    widths: tuple[int, ...]
    candidates: tuple[str, ...]


@dataclass(frozen=True)
class ChannelSpace:
    """A channel-searched space (``kind: channels``, FBNetV2): every searched layer picks a block and an
    output width; the input resolution is searched too. Shapes depend on the choices, so a LUT for it
    measures a grid of (cin, cout) per layer position (:meth:`grid`) and predictions interpolate.

    ``load_space(name, resolution)`` restricts :attr:`resolutions` to that one resolution."""

    name: str
    source: str
    resolutions: tuple[int, ...]
    width: float
    num_classes: int
    in_channels: int
    stem_block: str
    stem_widths: tuple[int, ...]
    stem_stride: int
    layers: tuple[ChannelLayer, ...]
    head_block: str
    head_channels: tuple[int, ...]
    grid_points: int
    raw: dict = field(repr=False, compare=False, default_factory=dict)

    kind = "channels"

    @property
    def resolution(self) -> int:
        """The default resolution (the first option)."""
        return self.resolutions[0]

    @property
    def tags(self) -> list[SpaceTag]:
        return [SpaceTag(self.name, r, self.width) for r in self.resolutions]

    @property
    def tag(self) -> SpaceTag:
        return self.tags[0]

    def params(self) -> dict[str, Any]:
        return {"space": self.name, "resolutions": list(self.resolutions), "width": self.width}

    def _positions(self, resolution: int):
        """(layer, input h, input w, possible input widths) for every searched layer at ``resolution``."""
        stem = OpSpec(self.stem_block, self.in_channels, resolution, resolution, self.stem_widths[0], self.stem_stride)
        (h, w), cins = stem.out_hw, self.stem_widths
        out = []
        for layer in self.layers:
            out.append((layer, h, w, cins))
            probe = OpSpec("skip", 1, h, w, 2, layer.stride)  # every block maps h the same way (odd k, pad k//2)
            h, w = probe.out_hw
            cins = layer.widths
        return out, (h, w), cins

    def grid(self) -> list[GridCell]:
        """The (cin, cout) grid measured for the interpolated blocks, at every resolution option."""
        cells = set()
        for r in self.resolutions:
            positions, _, _ = self._positions(r)
            for layer, h, w, cins in positions:
                if any(parse_block(c).kind == "ir" for c in layer.candidates):
                    cells.add(GridCell(h, w, layer.stride, _grid_axis(cins, self.grid_points),
                                       _grid_axis(layer.widths, self.grid_points)))
        return sorted(cells)

    def all_specs(self) -> list[OpSpec]:
        """Every op a LUT for this space measures: IR candidates at the grid points; skips, stem, head and
        FC exactly at every shape they can take (identity skips excluded). Sorted by key."""
        specs: set[OpSpec] = set()
        for r in self.resolutions:
            positions, (fh, fw), last = self._positions(r)
            specs.update(OpSpec(self.stem_block, self.in_channels, r, r, c, self.stem_stride) for c in self.stem_widths)
            for layer, h, w, cins in positions:
                cin_axis, cout_axis = _grid_axis(cins, self.grid_points), _grid_axis(layer.widths, self.grid_points)
                for block in layer.candidates:
                    if parse_block(block).kind == "ir":
                        specs.update(OpSpec(block, ci, h, w, co, layer.stride) for ci in cin_axis for co in cout_axis)
                    else:
                        specs.update(OpSpec(block, ci, h, w, co, layer.stride) for ci in cins for co in layer.widths)
            for c in last:
                specs.update(OpSpec(self.head_block, c, fh, fw, hc, 1) for hc in self.head_channels)
            specs.update(OpSpec("fc", hc, 1, 1, self.num_classes, 1) for hc in self.head_channels)
        return sorted((s for s in specs if not s.is_identity), key=lambda s: s.key)

    def heldout_specs(self, count: int, seed: int = 0) -> list[OpSpec]:
        """``count`` inverted-residual ops of the space *off* the grid (cin or cout, or both, not an axis
        point), drawn at random (fixed seed): measured directly, they check the interpolation."""
        import random

        rng = random.Random(seed)
        pool = []
        for r in self.resolutions:
            positions, _, _ = self._positions(r)
            for layer, h, w, cins in positions:
                ca, oa = _grid_axis(cins, self.grid_points), _grid_axis(layer.widths, self.grid_points)
                off = [(ci, co) for ci in cins for co in layer.widths if ci not in ca or co not in oa]
                blocks = [b for b in layer.candidates if parse_block(b).kind == "ir"]
                if off and blocks:
                    pool.append((layer, h, w, off, blocks))
        out: set[OpSpec] = set()
        tries = 0
        while pool and len(out) < count and tries < 100 * count:
            tries += 1
            layer, h, w, off, blocks = rng.choice(pool)
            ci, co = rng.choice(off)
            out.add(OpSpec(rng.choice(blocks), ci, h, w, co, layer.stride))
        return sorted(out, key=lambda s: s.key)

    def block_allowed(self, layer: ChannelLayer, block: str) -> bool:
        """A candidate, or an IR block whose family has candidates of smaller and larger expansion (its
        latency is then interpolated between them)."""
        if block in layer.candidates:
            return True
        b = parse_block(block)
        if b.kind != "ir":
            return False
        exps = [parse_block(c).expansion for c in layer.candidates if parse_block(c).family == b.family]
        return bool(exps) and min(exps) <= b.expansion <= max(exps)

    def arch(self, blocks, channels, stem_channels: int | None = None, head_channels: int | None = None,
             name: str = "arch") -> "ChannelArch":
        if len(self.resolutions) != 1:
            raise InputError(f"space {self.name}: an architecture needs one resolution "
                             f"(options: {', '.join(map(str, self.resolutions))})")
        n = len(self.layers)
        if len(blocks) != n or len(channels) != n:
            raise InputError(f"arch {name}: {len(blocks)} blocks and {len(channels)} channels given, "
                             f"space {self.name} has {n} searched layers")
        sc = self.stem_widths[0] if stem_channels is None else stem_channels
        hc = self.head_channels[0] if head_channels is None else head_channels
        if sc not in self.stem_widths:
            raise InputError(f"arch {name}: stem channels {sc} not offered ({', '.join(map(str, self.stem_widths))})")
        if hc not in self.head_channels:
            raise InputError(f"arch {name}: head channels {hc} not offered ({', '.join(map(str, self.head_channels))})")
        for layer, b, c in zip(self.layers, blocks, channels):
            if c not in layer.widths:
                raise InputError(f"arch {name}: layer {layer.name}: width {c} not offered "
                                 f"({', '.join(map(str, layer.widths))})")
            if not self.block_allowed(layer, b):
                raise InputError(f"arch {name}: layer {layer.name}: {b!r} is neither a candidate nor between two "
                                 f"candidate expansions of its family (candidates: {', '.join(layer.candidates)})")
        a = ChannelArch(name, self, tuple(blocks), tuple(int(c) for c in channels), sc, hc)
        a.ops()  # validates shapes (groups, strides)
        return a


@dataclass(frozen=True)
class ChannelArch(_OpTotals):
    """One architecture of a channel space: a block and an output width per searched layer."""

    name: str
    space: ChannelSpace
    blocks: tuple[str, ...]
    channels: tuple[int, ...]
    stem_channels: int
    head_channels: int

    def ops(self) -> list[tuple[str, OpSpec]]:
        s, r = self.space, self.space.resolution
        stem = OpSpec(s.stem_block, s.in_channels, r, r, self.stem_channels, s.stem_stride)
        out: list[tuple[str, OpSpec]] = [("stem", stem)]
        cin, (h, w) = stem.cout, stem.out_hw
        for layer, b, c in zip(s.layers, self.blocks, self.channels):
            try:
                op = OpSpec(b, cin, h, w, c, layer.stride)
            except InputError as e:
                raise InputError(f"arch {self.name}: layer {layer.name}: {e.message}") from None
            out.append((layer.name, op))
            cin, (h, w) = c, op.out_hw
        out.append(("head", OpSpec(s.head_block, cin, h, w, self.head_channels, 1)))
        out.append(("fc", OpSpec("fc", self.head_channels, 1, 1, s.num_classes, 1)))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "name": self.name, "space": self.space.source, "resolution": self.space.resolution,
            "stem_channels": self.stem_channels, "head_channels": self.head_channels,
            "blocks": list(self.blocks), "channels": list(self.channels),
        }

    def dump(self, path: str | Path) -> None:
        from fbprof.fileio import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


_CHANNEL_SPACE_FIELDS = {
    "schema", "name", "kind", "description", "resolutions", "width", "channel_divisor", "in_channels",
    "num_classes", "stem", "stages", "candidates", "head", "grid",
}


def _int_list(f: _Fields, d: dict, key: str, ctx: str) -> tuple[int, ...]:
    v = d.get(key)
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, list) or not v or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in v):
        f.bad(d, key if key in d else None, f"{ctx}{key}: expected a positive integer or a non-empty list of them")
        return ()
    if len(set(v)) != len(v):
        f.bad(d, key, f"{ctx}{key}: duplicate values")
    return tuple(sorted(set(v)))


def decode_channel_space(data: dict, path: str, source: str, resolution: int | None = None,
                         width: float | None = None) -> ChannelSpace:
    """Decode a ``kind: channels`` space file (see ``fbprof/data/spaces/fbnetv2.yaml``)."""
    problems: list[str] = []
    f = _Fields(path, problems)
    d = data
    f.unknown(d, _CHANNEL_SPACE_FIELDS, "")
    if d.get("schema", SCHEMA) != SCHEMA:
        f.bad(d, "schema", f"unsupported schema {d.get('schema')!r} (this fbprof reads schema {SCHEMA})")
    if width not in (None, 1, 1.0) or d.get("width", 1.0) != 1.0:
        raise InputError(f"{path}: channel spaces search the widths themselves; the width multiplier must be 1")
    name = d.get("name") or Path(path).stem
    resolutions = _int_list(f, d, "resolutions", "")
    if resolution is not None:
        if resolution < 8:
            raise InputError(f"resolution {resolution} is too small (at least 8)")
        resolutions = (resolution,)
    if d.get("channel_divisor", 8) != 8:
        f.bad(d, "channel_divisor", "channel_divisor: channel spaces use 8 (the FBNetV2 blocks round to 8)")
    in_ch = f.pos_int(d, "in_channels", "", 3)
    classes = f.pos_int(d, "num_classes", "", 1000)
    grid_d = f.mapping(d.get("grid", {}), "grid")
    f.unknown(grid_d, {"points"}, "grid.")
    points = f.pos_int(grid_d, "points", "grid.", 2)
    if points < 2:
        f.bad(grid_d, "points", "grid.points: at least 2 (the ends of every axis)")

    def block_of(where: dict, ctx: str, kinds: tuple[str, ...], default: str) -> str:
        key = "block"
        b = where.get(key, default)
        try:
            if not isinstance(b, str) or parse_block(b).kind not in kinds:
                f.bad(where, key, f"{ctx}{key}: expected a block of kind {' or '.join(kinds)}, got {b!r}")
        except InputError as e:
            f.bad(where, key, f"{ctx}{key}: {e.message}")
        return b if isinstance(b, str) else default

    def cands(cs: Any, where: dict) -> tuple[str, ...]:
        if not isinstance(cs, list) or not cs or not all(isinstance(c, str) for c in cs):
            f.bad(where, "candidates", "candidates: expected a non-empty list of block names")
            return ()
        for c in cs:
            try:
                if parse_block(c).kind not in ("ir", "skip"):
                    f.bad(where, "candidates", f"candidates: {c!r} cannot be a searched candidate")
            except InputError as e:
                f.bad(where, "candidates", f"candidates: {e.message}")
        if len(set(cs)) != len(cs):
            f.bad(where, "candidates", "candidates: duplicate candidates")
        return tuple(cs)

    stem_d = f.mapping(d.get("stem", {}), "stem")
    f.unknown(stem_d, {"channels", "stride", "block"}, "stem.")
    stem_widths = _int_list(f, stem_d, "channels", "stem.")
    stem_stride = f.pos_int(stem_d, "stride", "stem.", 2)
    stem_block = block_of(stem_d, "stem.", ("stem",), "stem")
    head_d = f.mapping(d.get("head", {}), "head")
    f.unknown(head_d, {"channels", "block"}, "head.")
    head_channels = _int_list(f, head_d, "channels", "head.")
    head_block = block_of(head_d, "head.", ("irpool", "head"), "head")
    top = cands(d["candidates"], d) if "candidates" in d else None
    stages = d.get("stages")
    if not isinstance(stages, list) or not stages:
        f.bad(d, "stages" if "stages" in d else None, "stages: expected a non-empty list")
        stages = []
    layers: list[ChannelLayer] = []
    for si, st in enumerate(stages, 1):
        ctx = f"stages[{si - 1}]."
        st = f.mapping(st, ctx[:-1])
        f.unknown(st, {"channels", "repeats", "stride", "candidates"}, ctx)
        widths = _int_list(f, st, "channels", ctx)
        reps = f.pos_int(st, "repeats", ctx, 1)
        stride = f.pos_int(st, "stride", ctx, 1)
        cs = cands(st["candidates"], st) if "candidates" in st else top
        if not cs:
            if cs is None:
                f.bad(st, None, f"{ctx[:-1]}: no candidates (give candidates at the top or per stage)")
            continue
        for r in range(reps):
            layers.append(ChannelLayer(f"L{len(layers) + 1:02d}", si, stride if r == 0 else 1, widths, cs))
    if problems:
        raise FileFormatError(path, problems)
    sp = ChannelSpace(name, source, resolutions, 1.0, classes, in_ch, stem_block, stem_widths, stem_stride,
                      tuple(layers), head_block, head_channels, points, raw=dict(d))
    try:
        for r in resolutions:
            sp._positions(r)
        sp.all_specs()
    except InputError as e:
        raise FileFormatError(path, [f"{path}:1: {e.message}"]) from None
    return sp


def _channel_arch(d: dict, f: _Fields, path: str, space: ChannelSpace, name: str) -> ChannelArch:
    """The channel-space half of :func:`load_arch`: ``blocks`` and ``channels`` per searched layer."""
    chans = d.get("channels")
    if not isinstance(chans, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in chans):
        raise FileFormatError(path, [f"{f.where(d, 'channels' if 'channels' in d else None)}: channels: expected a "
                                     "list of output widths, one per searched layer"])
    try:
        return space.arch(d["blocks"], chans, d.get("stem_channels"), d.get("head_channels"), name=name)
    except InputError as e:
        raise FileFormatError(path, [f"{f.where(d, 'blocks')}: {e.message}"]) from None
