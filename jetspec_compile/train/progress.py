"""Progress reporting on ``rich.progress`` (plain log lines when stderr is not a terminal)."""

from __future__ import annotations

import time
from typing import Sequence

class _NullBar:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def advance(self, n=1, **fields):
        pass

    def update(self, **fields):
        pass


class _RichBar:
    """A rich progress bar on a terminal; plain log lines (every ``log_every`` steps) otherwise."""

    def __init__(self, description: str, total: int, log_every: int = 10):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.total, self.done, self.printed, self.log_every = total, 0, 0, max(1, log_every)
        self.description = description
        self.fields = ""
        self.t0 = time.time()
        self.progress = None
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn

            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                     console=self.console)

    def __enter__(self):
        if self.progress is not None:
            self.progress.__enter__()
            self.task = self.progress.add_task(self.description, total=self.total, info="")
        return self

    def __exit__(self, *a):
        if self.progress is not None:
            self.progress.__exit__(*a)
        return False

    def advance(self, n: int = 1, info: str | None = None) -> None:
        self.done += n
        if info is not None:
            self.fields = info
        if self.progress is not None:
            self.progress.update(self.task, advance=n, info=self.fields)
        elif self.done - self.printed >= self.log_every or self.done == self.total:
            self.printed = self.done
            el = time.time() - self.t0
            self.console.print(f"{self.description} {self.done}/{self.total} [{el / 60:.1f} min] {self.fields}",
                               highlight=False, soft_wrap=True)


def _progress(enabled: bool, description: str, total: int, log_every: int = 10):
    return _RichBar(description, total, log_every) if enabled else _NullBar()


def _fmt_top1(top1: Sequence[float]) -> str:
    return " ".join(f"{100 * x:.0f}" for x in top1)
