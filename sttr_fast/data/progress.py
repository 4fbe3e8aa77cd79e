"""A dependency-free progress bar for long conversions: one redrawn line on a terminal, a line every
10% when the output is a log."""
from __future__ import annotations

import sys
import time


class ProgressBar:
    def __init__(self, total: int, label: str, done: int = 0, stream=None, width: int = 30):
        self.total, self.label, self.done, self.width = total, label, done, width
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = getattr(self.stream, "isatty", lambda: False)()
        self.started, self.started_at = time.monotonic(), done
        self.last_drawn, self.last_decile = 0.0, done * 10 // max(total, 1)

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if self.interactive:
            if now - self.last_drawn >= 0.2 or self.done == self.total:
                self.last_drawn = now
                self.stream.write("\r" + self.line())
                self.stream.flush()
        elif self.done * 10 // max(self.total, 1) > self.last_decile:
            self.last_decile = self.done * 10 // max(self.total, 1)
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        """Print a line above the bar without garbling it."""
        if self.interactive:
            self.stream.write("\r\033[K" + text + "\n" + self.line())
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()

    def line(self) -> str:
        fraction = self.done / self.total if self.total else 1.0
        filled = int(fraction * self.width)
        elapsed = time.monotonic() - self.started
        rate = (self.done - self.started_at) / elapsed if elapsed > 0 else 0.0
        remaining = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = "--:--" if remaining != remaining else _clock(remaining)
        return (f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
                f"{self.done:,}/{self.total:,} {rate:,.0f}/s eta {eta}")


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
