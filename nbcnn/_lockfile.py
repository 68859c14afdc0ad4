"""An exclusive lock on an output path, so two runs never write (or delete) the same files.

``nbcnn train --out m.nbcnn`` holds ``m.nbcnn.lock`` while it runs. The lock
is an ``flock`` on that file, which the kernel releases when the holder dies
(``kill -9`` included), so a lock left behind by a crashed run is never in the
way. The file records the holder's pid, host and start time; that is what the
refusal message shows, and where ``flock`` is unavailable (no ``fcntl``)
the pid is checked instead: a lock from this host whose pid is gone is stale
and taken over.
"""
from __future__ import annotations

import json
import os
import socket
import time

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS
    fcntl = None

__all__ = ["LockHeld", "PathLock", "lock_path_for"]


class LockHeld(OSError):
    """Another live process holds the lock; ``holder`` is its record (pid, host, started, command)."""

    def __init__(self, path: str, holder: dict):
        self.path, self.holder = path, holder
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
        since = holder.get("started")
        when = f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}" if since else ""
        super().__init__(f"{path} is locked by another run ({who}{when})")


def lock_path_for(path) -> str:
    return os.fspath(path) + ".lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return True


def _read_record(fd_or_path) -> dict:
    try:
        if isinstance(fd_or_path, int):
            os.lseek(fd_or_path, 0, os.SEEK_SET)
            data = os.read(fd_or_path, 4096)
        else:
            with open(fd_or_path, "rb") as f:
                data = f.read(4096)
        rec = json.loads(data.decode("utf-8") or "{}")
        return rec if isinstance(rec, dict) else {}
    except (OSError, ValueError, UnicodeDecodeError):
        return {}


class PathLock:
    """``with PathLock(path):`` — hold ``path``'s lock file or raise :class:`LockHeld` at once."""

    def __init__(self, path, what: str = ""):
        self.path = lock_path_for(path)
        self.what = what
        self.fd: int | None = None

    def acquire(self) -> "PathLock":
        for _ in range(20):  # retries only when the file was replaced under us
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if not self._lock(fd):
                    holder = _read_record(fd)
                    raise LockHeld(self.path, holder)
                try:  # the holder before us may have unlinked the file after we opened it
                    same = os.path.samestat(os.fstat(fd), os.stat(self.path))
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
                record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                          "what": self.what}
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, json.dumps(record).encode())
                self.fd = fd
                return self
            except BaseException:
                if self.fd != fd:
                    os.close(fd)
                raise
        raise OSError(f"could not lock {self.path}: it keeps being replaced")

    def _lock(self, fd: int) -> bool:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False
            except OSError:  # a file system without flock: fall back to the recorded pid
                pass
        rec = _read_record(fd)
        if not rec.get("pid") or rec.get("pid") == os.getpid():
            return True
        if rec.get("host") != socket.gethostname():
            return False  # cannot tell whether a process on another host is alive: assume it is
        return not _pid_alive(int(rec["pid"]))

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            os.unlink(self.path)  # while still locked, so nobody else holds an unlinked file
        except OSError:
            pass
        os.close(fd)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
