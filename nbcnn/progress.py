"""A dependency-free progress bar: live on a terminal, silent when output is piped.

``ProgressBar(total)`` redraws one line at most ~10 times a second with the
step count, a bar, elapsed time, ETA, images/s and any metrics given to
``update``. When the stream is not a TTY (CI logs, ``| tee``) it draws
nothing; callers print their own one-line summaries.
"""
from __future__ import annotations

import sys
import time

__all__ = ["ProgressBar", "format_time", "is_tty"]


def is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def format_time(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"{m}:{s:02d}"
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


class ProgressBar:
    """``bar = ProgressBar(total, prefix="epoch 1/5")``; ``bar.update(step, items=64, loss=0.3)``; ``bar.close()``."""

    def __init__(self, total: int | None, prefix: str = "", stream=None, enabled: bool | None = None,
                 width: int = 24, min_interval: float = 0.1):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = is_tty(self.stream) if enabled is None else bool(enabled)
        self.total = total
        self.prefix = prefix
        self.width = width
        self.min_interval = min_interval
        self.start = time.perf_counter()
        self.items = 0
        self.step = 0
        self._last = 0.0
        self._len = 0

    def update(self, step: int, items: int = 0, force: bool = False, **metrics) -> None:
        """Record that ``step`` steps are done (``items`` more images) and redraw if due."""
        self.step = step
        self.items += items
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last < self.min_interval and step != self.total:
            return
        self._last = now
        self._draw(now, metrics)

    def _draw(self, now, metrics) -> None:
        el = now - self.start
        parts = [self.prefix] if self.prefix else []
        if self.total:
            frac = min(1.0, self.step / self.total)
            fill = int(frac * self.width)
            bar = "=" * fill + (">" if fill < self.width else "") + "." * max(0, self.width - fill - 1)
            parts.append(f"{self.step}/{self.total} [{bar}]")
            eta = el / self.step * (self.total - self.step) if self.step else 0.0
            parts.append(f"{format_time(el)} ETA {format_time(eta)}" if self.step < self.total
                         else format_time(el))
        else:
            parts.append(f"{self.step} {format_time(el)}")
        if self.items and el > 0:
            parts.append(f"{self.items / el:,.0f} img/s")
        parts += [f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()]
        line = " - ".join(parts)
        pad = " " * max(0, self._len - len(line))
        self._len = len(line)
        try:
            self.stream.write("\r" + line + pad)
            self.stream.flush()
        except (OSError, ValueError):
            self.enabled = False

    def close(self) -> None:
        """Finish the line (a newline on a terminal, nothing otherwise)."""
        if self.enabled and self._len:
            try:
                self.stream.write("\r" + " " * self._len + "\r")
                self.stream.flush()
            except (OSError, ValueError):
                pass
        self._len = 0

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start
