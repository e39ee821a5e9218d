"""Atomic file writes (a reader never sees a half-written file), output locks, and where fbprof caches."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fbprof.errors import FbprofError, InputError


def cache_dir(kind: str) -> Path:
    """Where fbprof caches one kind of thing (``artifacts``: exported models; ``images``: decoded datasets):
    ``$FBPROF_CACHE_DIR/<kind>``, else ``$XDG_CACHE_HOME/fbprof/<kind>``, else ``~/.cache/fbprof/<kind>``.
    Read when asked (never at import); each kind has its own folder, so no cache reads another's files."""
    env = os.environ.get("FBPROF_CACHE_DIR")
    if env:
        return Path(env) / kind
    return Path(os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")) / "fbprof" / kind


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync, then rename.

    A folder that cannot be written (read-only, full, missing permission) is a :class:`WriteError` naming
    ``path``; the file there, if any, is left as it was."""
    path = Path(path)
    try:
        _atomic_write(path, data)
    except OSError as e:
        raise WriteError(path, e) from None


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:  # keep an existing file's mode; a new file gets the usual umask-based mode, not mkstemp's 0600
            mode = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def os_error_message(path: str | Path, e: OSError) -> tuple[str, str | None]:
    """(message, hint) for an OSError met while writing ``path``."""
    import errno

    reason = e.strerror or str(e)
    hint = None
    if e.errno == errno.ENOSPC:
        hint = "free some space on that disk, or write somewhere else"
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        hint = "write somewhere you may write (another --out)"
    return f"cannot write {path}: {reason}", hint


class WriteError(FbprofError):
    """A file could not be written: read-only or full folder, no permission."""

    def __init__(self, path: str | Path, e: OSError) -> None:
        message, hint = os_error_message(path, e)
        super().__init__(message, hint=hint)
        self.path = str(path)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


#: the most a data file (space, architecture, profile) may hold; real ones are a few KB
DATA_FILE_LIMIT = 1 << 20


def read_text_limited(path: str | Path, limit: int = DATA_FILE_LIMIT, what: str = "file") -> str:
    """Read a regular UTF-8 file of at most ``limit`` bytes; anything else is an InputError naming it.

    Devices, FIFOs and ``/dev/zero`` are refused before reading, so a name cannot make fbprof read forever."""
    path = Path(path)
    try:
        if not os.path.isdir(path) and not os.path.isfile(path) and os.path.exists(path):  # a FIFO would block open()
            raise InputError(f"{path}: not a regular file (a {what} must be a file)")
        with open(path, "rb") as fh:
            if not _is_regular(fh.fileno()):
                raise InputError(f"{path}: not a regular file (a {what} must be a file)")
            data = fh.read(limit + 1)
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not a {what}") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(data) > limit:
        raise InputError(f"{path}: larger than {limit // 1024} KiB; not a {what} fbprof wrote")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _is_regular(fd: int) -> bool:
    import stat

    return stat.S_ISREG(os.fstat(fd).st_mode)


# ------------------------------------------------------------------------------------------------
class LockHeld(Exception):
    """Raised by :class:`OutputLock` when another process holds the lock; ``holder`` says who."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is locked by {holder}")
        self.path = path
        self.holder = holder


class OutputLock:
    """One writer per output file: an exclusive ``flock`` on ``<path>.lock``, which holds the holder's pid,
    host and command so a refused second writer can name it. fbprof creates the lock file and removes it.

    The kernel drops the lock when its holder dies, so a lock file left by a killed run never blocks the
    next one. Where ``fcntl`` does not exist (Windows) the lock is a no-op."""

    def __init__(self, path: str | Path, command: str = "") -> None:
        self.target = Path(path)
        self.path = Path(str(path) + ".lock")
        self.command = command
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        import socket

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                try:
                    holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
                finally:
                    os.close(fd)
                raise LockHeld(self.target, " ".join(holder.split())[:300]) from None
            try:  # the holder removes the file as it lets go: a lock on a removed file is no lock
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        cmd = " ".join(self.command.split())[:200]
        info = f"pid {os.getpid()} on {socket.gethostname()}" + (f" ({cmd})" if cmd else "")
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode("utf-8", "replace") + b"\n", 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # while still held: a waiting process then locks a fresh file
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
