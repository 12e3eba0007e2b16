"""``worker predict`` on the terminal: a progress bar while it runs, the score's lines after."""

from __future__ import annotations

from collections.abc import Callable
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.training.metrics import Score


class ProgressBar:
    """A Rich progress bar with images/s on stderr when it is a terminal; otherwise nothing."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled and sys.stderr.isatty()
        self._progress: Any = None

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda k: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("predicting"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._progress.start()
        task = self._progress.add_task("predict", total=self.total, rate="")
        started = time.perf_counter()
        done = [0]

        def advance(k: int) -> None:
            done[0] += k
            rate = done[0] / max(time.perf_counter() - started, 1e-9)
            self._progress.update(task, advance=k, rate=f"{rate:.0f} images/s")

        return advance

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def render_score(score: Score, scored: int, n: int) -> list[str]:
    """The lines ``worker predict`` prints for a labelled set."""
    from contract.data_format import CLASS_NAMES

    per_class = ", ".join(f"{c}:{v:.4f}" if v == v else f"{c}:n/a" for c, v in score.per_class.items())
    left_out = f" ({n - scored} repeated-mask aliens left out, as in training)" if scored < n else ""
    lines = [
        f"scored {scored} images{left_out}",
        f"mean IoU (classes 1-4): {score.miou:.4f}  per class: {per_class}",
        "confusion matrix (pixels; rows true class, columns predicted class 0-4):",
    ]
    width = max(len(str(int(v))) for v in score.confusion.ravel())
    for c, row in enumerate(score.confusion):
        lines.append(f"  {c} {CLASS_NAMES[c]:<10} " + " ".join(f"{int(v):>{width}d}" for v in row))
    return lines
