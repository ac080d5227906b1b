"""The run's one progress bar: units done of the run's total, the condition and method being
evaluated, and an ETA from the work done after the first unit (which also pays for the model's
warm-up and would otherwise inflate it many times over)."""
from __future__ import annotations

import time
from typing import Callable

from tqdm import tqdm

# how often the description may redraw the bar on its own (every finished unit redraws it)
REDRAW_SECONDS = 0.5
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} units [{elapsed}{postfix}]"


def eta_seconds(done: int, total: int, since_first: float) -> float | None:
    """Seconds left when `done` of `total` units are finished and `since_first` seconds have
    passed since the first one finished: the mean of units 2..done times the units left. None
    until a unit after the first has finished (nothing measured yet)."""
    if done >= total:
        return 0.0
    if done < 2:
        return None
    return since_first / (done - 1) * (total - done)


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "eta ?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    return f"eta {h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"eta {rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """`working_on(condition, method)` names the current work; `advance()` after each unit."""

    def __init__(self, total: int, enabled: bool = True, file=None, clock: Callable[[], float] = time.perf_counter):
        self.total, self.done, self.clock = total, 0, clock
        self.first_at: float | None = None
        self.drawn = float("-inf")
        self.bar = tqdm(total=total, desc="loading the model", disable=not enabled, dynamic_ncols=True,
                        bar_format=BAR_FORMAT, file=file, postfix=format_eta(None), mininterval=0, miniters=1)

    def working_on(self, condition: str, method: str) -> None:
        now = self.clock()
        self.bar.set_description_str(f"{condition} | {method}", refresh=False)
        if now - self.drawn >= REDRAW_SECONDS:
            self.drawn = now
            self.bar.refresh()

    def advance(self) -> None:
        self.done += 1
        now = self.clock()
        if self.first_at is None:
            self.first_at = now
        self.bar.set_postfix_str(format_eta(eta_seconds(self.done, self.total, now - self.first_at)), refresh=False)
        self.drawn = now
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
