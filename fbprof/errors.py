"""fbprof's exceptions. The CLI's one error boundary turns these into a message and an exit code."""

from __future__ import annotations


class FbprofError(Exception):
    """Base class: a problem the user can act on. ``str(err)`` is the whole message."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nhint: {self.hint}"


class InputError(FbprofError):
    """Bad user input: unknown name, malformed file, inconsistent options."""

    exit_code = 2


class FileFormatError(InputError):
    """A file could not be read; ``problems`` lists every ``path:line: reason`` found."""

    def __init__(self, path: str, problems: list[str], *, hint: str | None = None) -> None:
        self.path = str(path)
        self.problems = list(problems)
        head = f"{path}: {len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(head + "\n" + "\n".join(f"  {p}" for p in problems), hint=hint)


class LutCoverageError(InputError):
    """A LUT lacks rows that an architecture or space needs."""

    def __init__(self, path: str, missing: list[str], what: str) -> None:
        self.path = str(path)
        self.missing = list(missing)
        shown = "\n".join(f"  {k}" for k in missing[:50])
        more = f"\n  ... and {len(missing) - 50} more" if len(missing) > 50 else ""
        super().__init__(
            f"{path} does not cover {what}: {len(missing)} key{'s' if len(missing) != 1 else ''} missing\n{shown}{more}",
            hint="measure them with `fbprof measure` for that space/resolution/width (missing rows are added to the file)",
        )


class MissingExtraError(FbprofError):
    """An optional dependency is not installed."""

    exit_code = 3

    def __init__(self, what: str, extra: str, module: str) -> None:
        self.args_ = (what, extra, module)
        super().__init__(
            f"{what} needs the Python package {module!r}, which is not installed",
            hint=f"pip install 'fbprof[{extra}]'",
        )

    def __reduce__(self):  # rebuilt whole in the process that started an export worker (pickle)
        return type(self), self.args_


class DeviceError(FbprofError):
    """The device could not be reached or failed while measuring."""

    exit_code = 4


class MeasurementError(FbprofError):
    """A measurement could not be made (export or runtime failure)."""

    exit_code = 5
