"""The run's one progress bar: steps done of the run's total (a step is one method answering one
batch under one condition), the condition and method being evaluated, and an ETA from the work
done after the first unit (which also pays for the model's warm-up and would otherwise inflate
the estimate many times over)."""
from __future__ import annotations

import time
from typing import Callable

from tqdm import tqdm

BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} steps [{elapsed}{postfix}]"


def eta_seconds(done: int, total: int, since_first: float | None, first: int) -> float | None:
    """Seconds left when `done` of `total` steps are finished, the first unit of work held
    `first` of them and `since_first` seconds have passed since it ended (None: it has not):
    the time per step after the first unit times the steps left. None while nothing after the
    first unit has been measured."""
    if done >= total:
        return 0.0
    if since_first is None or done <= first:
        return None
    return since_first / (done - first) * (total - done)


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "eta ?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    return f"eta {h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"eta {rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """`working_on(condition, method)` names the current work, `step()` after it, `unit_done()`
    after each unit (the first one's end starts the ETA's clock)."""

    def __init__(self, total: int, enabled: bool = True, file=None, clock: Callable[[], float] = time.perf_counter,
                 mininterval: float = 0.5):
        self.total, self.done, self.clock = total, 0, clock
        self.first_at: float | None = None
        self.first = 0  # steps of the first unit
        self.bar = tqdm(total=total, desc="loading the model", disable=not enabled, dynamic_ncols=True,
                        bar_format=BAR_FORMAT, file=file, postfix=format_eta(None), mininterval=mininterval)

    def working_on(self, condition: str, method: str) -> None:
        self.bar.set_description_str(f"{condition} | {method}", refresh=False)

    def step(self) -> None:
        self.done += 1
        since = None if self.first_at is None else self.clock() - self.first_at
        self.bar.set_postfix_str(format_eta(eta_seconds(self.done, self.total, since, self.first)), refresh=False)
        self.bar.update(1)

    def unit_done(self) -> None:
        if self.first_at is None:
            self.first_at, self.first = self.clock(), self.done

    def close(self) -> None:
        self.bar.close()
