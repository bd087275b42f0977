"""Progress of a long loop: a tqdm bar on a terminal, plain timed lines when stderr is a log file.

CI logs and ``| tee`` are not terminals: a bar there is either silent or a wall of carriage
returns, so the loop prints one line per epoch instead, throttled to one every ``every_s``
seconds, and a heartbeat inside an epoch that runs longer than ``heartbeat_s``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

LINE_EVERY_S = 10.0
HEARTBEAT_S = 50.0  # well inside the one-line-a-minute promise for a log reader


def on_terminal(stream: TextIO | None = None) -> bool:
    s = stream or sys.stderr
    return not os.environ.get("CI") and hasattr(s, "isatty") and s.isatty()


class Progress:
    """``epoch(...)`` after each epoch, ``tick()`` inside one (cheap: it only reads the clock)."""

    def __init__(self, stage: str, epochs: int, *, enabled: bool = True, stream: TextIO | None = None,
                 every_s: float | None = None, heartbeat_s: float | None = None, unit: str = "epoch") -> None:
        self.stage, self.epochs, self.enabled, self.unit = stage, epochs, enabled, unit
        self.stream = stream or sys.stderr
        self.every_s = LINE_EVERY_S if every_s is None else every_s
        self.heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
        self.start = self.last = time.monotonic()
        self.current = 0
        self.bar: Any = None
        if enabled and on_terminal(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=epochs, desc=stage, unit=unit, leave=False, file=self.stream)

    def _line(self, text: str) -> None:
        self.last = time.monotonic()
        print(f"[{self.stage}] {text} ({self.last - self.start:.0f} s)", file=self.stream, flush=True)

    def tick(self, done: int | None = None, total: int | None = None) -> None:
        if not self.enabled or self.bar is not None or time.monotonic() - self.last < self.heartbeat_s:
            return
        where = f", batch {done}/{total}" if done is not None and total else ""
        self._line(f"{self.unit} {self.current + 1}/{self.epochs}{where}: still running")

    def epoch(self, epoch: int, **values: float) -> None:
        """Report epoch ``epoch`` (1-based) finished, with values such as loss=..., val=..."""
        self.current = epoch
        if not self.enabled:
            return
        shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items())
        if self.bar is not None:
            self.bar.set_postfix_str(shown)
            self.bar.update(1)
            return
        due = time.monotonic() - self.last >= self.every_s
        if due or epoch in (1, self.epochs):
            left = (time.monotonic() - self.start) / epoch * (self.epochs - epoch)
            eta = f", about {left:.0f} s left" if epoch < self.epochs else ""
            self._line(f"{self.unit} {epoch}/{self.epochs}{': ' if shown else ''}{shown}{eta}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
