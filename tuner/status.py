"""``tuner list`` and ``tuner status``: what the study database holds, for a human.

What they show is read and computed as data in :mod:`tuner.status_data` (re-exported here);
this module renders it with Rich, fitted to the terminal's width. Text from the database goes
through :func:`printable` and Rich ``Text``, never markup.

Both commands only read: an empty database is reported as "no studies", never initialised,
because creating tables is the coordinator's deliberate act (``tuner db init`` / ``tuner create``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import datetime
import textwrap
from typing import Any
import unicodedata

from rich.console import Console
from rich.table import Table
from rich.text import Text

from contract.confirm import Confirmed
from contract.pareto import Pick
import storage
from storage.summaries import open_reader
from tuner.readers import find_or_fail, format_cost, spec_or_none
from tuner.status_data import (
    FINISHED,
    STATES,
    BestTrial,
    Front,
    RunningTrial,
    StatusData,
    StatusSummary,
    StudyRow,
    list_studies,
    read_status,
    summarize,
)

#: Console width from which running trials' parameters fit in their table as a column.
WIDE = 140


def print_study_list(storage_url: str | None, console: Console | None = None) -> None:
    """Render ``tuner list``."""
    console = console or Console()
    url = storage.resolve_url(storage_url)
    rows = list_studies(url)
    if not rows:
        console.print(f"no studies in {storage.mask_url(url)}", markup=False, highlight=False)
        return
    table = Table(title=Text(printable(f"studies in {storage.mask_url(url)}")), title_justify="left")
    for column, justify in (
        ("study", "left"),
        ("finished/budget", "right"),
        ("running", "right"),
        ("failed", "right"),
        ("best", "right"),
        ("created (UTC)", "left"),
    ):
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for row in rows:
        table.add_row(
            Text(printable(row.name)),
            Text(printable(f"{row.finished}/{row.budget if row.budget is not None else '-'}")),  # a hand-edited spec
            str(row.running),
            str(row.failed),
            _value(row.best_value),
            Text(printable(_when(row.created))),
        )
    console.print(table)


def print_status(name: str, storage_url: str | None, console: Console | None = None, pick: Pick | str = Pick()) -> None:
    """Render ``tuner status NAME``.

    Raises:
        StudyError: no such study (the message lists the existing ones), or a ``pick`` for a
            study with one objective.
        PickError: ``pick`` is not a pick rule.
        StorageError: unreachable database or no schema.
    """
    console = console or Console()
    pick = Pick.parse(pick)
    url = storage.resolve_url(storage_url)
    engine = open_reader(url)
    try:
        head = find_or_fail(engine, name, url)
        summary = summarize(read_status(engine, head, pick), spec_or_none(head))
    finally:
        engine.dispose()
    render_status(summary, storage.mask_url(url), console)


def render_status(summary: StatusSummary, masked_url: str, console: Console) -> None:
    """Print a :class:`StatusSummary`; plain lines plus two tables, fitted to ``console.width``."""

    def line(text: str) -> None:
        # Values are escaped where they are composed; this catches anything else (keeping the
        # line breaks of wrapped text).
        console.print("\n".join(map(printable, text.split("\n"))), markup=False, highlight=False)

    _study_lines(summary, masked_url, line)
    counts = Table(title="trials", title_justify="left")
    for state in STATES:
        counts.add_column(state.name, justify="right")
    counts.add_row(*(str(summary.counts[s.name]) for s in STATES))
    console.print(counts)
    _best_lines(summary, console.width, line)
    if summary.confirmed:
        console.print(confirmed_table(summary.confirmed))
    if not summary.running:
        line("running:  none")
        return
    # Wide terminals get the parameters as a column; narrow ones below the table, so that no
    # cell has to break a "name=value" item in the middle.
    wide = console.width >= WIDE
    console.print(_running_table(summary.running, wide))
    if not wide:
        for run in summary.running:
            line(_wrap(f"trial {run.number}: {_params(run.params)}", console.width, indent=2, hang=2))


def _study_lines(summary: StatusSummary, masked_url: str, line: Callable[[str], None]) -> None:
    """The study, where it is, what ``tuner create`` set, and how far the budget is spent."""
    budget = summary.budget if summary.budget is not None else "-"
    line(f"study:    {printable(summary.name)}")
    line(f"storage:  {masked_url}")
    if summary.budget is None:
        line("spec:     none (study not created by `tuner create`)")
    else:
        line(f"budget:   {budget} trials; sampler {summary.sampler}, pruner {summary.pruner}")
        line(f"data:     {(summary.fingerprint or '-')[:12]}")
    line(f"progress: {summary.finished}/{budget} finished (complete + pruned)")
    if summary.confirmed:
        total = sum(summary.confirming.values())
        line(
            f"confirm:  {summary.confirming.get('COMPLETE', 0)}/{total} confirmation trials complete "
            f"(outside the budget; `tuner confirm`)"
        )


def _best_lines(summary: StatusSummary, width: int, line: Callable[[str], None]) -> None:
    """Two objectives: the goal and the front; then the best (or picked) trial and its parameters."""
    front = summary.front
    if front is not None:
        line(f"goal:     {front.objectives[0]} against {front.objectives[1]} (two objectives)")
        line(f"front:    {front.size} of {front.complete} complete trials on the Pareto front")
    best = summary.best
    if best is None:
        line("best:     no completed trial yet")
        return
    line(_best_line(best, front, summary.picked))
    line(_wrap(_params(best.params), width, indent=10))


def _best_line(best: BestTrial, front: Front | None, picked: Confirmed | None) -> str:
    per_class = (
        " ".join(f"{c}={'n/a' if v is None else _value(v)}" for c, v in sorted(best.per_class_iou.items())) or "-"
    )
    if picked is not None:
        return (
            f"pick:     confirmed -> trial {best.number}: mean {_value(picked.mean)} - SE "
            f"{_value(picked.stderr)} = {_value(picked.score)} over {picked.n} confirmation runs "
            f"(search run {_value(best.value)})"
        )
    if front is not None:
        return (
            f"pick:     {front.pick} -> trial {best.number}: {front.objectives[0]} {_value(best.value)}, "
            f"{front.objectives[1]} {format_cost(best.cost)}; IoU per class: {per_class}"
        )
    return f"best:     {_value(best.value)} (trial {best.number}); IoU per class: {per_class}"


def _running_table(running: list[RunningTrial], wide: bool) -> Table:
    """One row per running trial: where, how long, what phase, its epochs; ``wide``: its parameters."""
    table = Table(title="running trials", title_justify="left")
    for column, justify in (
        ("trial", "right"),
        ("host", "left"),
        ("pid", "right"),
        ("gpu", "right"),
        ("age", "right"),
        ("phase", "left"),
        ("epoch", "right"),
        ("val mIoU", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    if wide:
        table.add_column("params", ratio=1)
    for run in running:
        cells = [
            str(run.number),
            Text(printable(run.host or "-")),
            str(run.pid) if run.pid is not None else "-",
            str(run.gpu) if run.gpu is not None else "-",
            format_age(run.age_s),
            Text(printable(run.phase or "-")),
            str(run.epoch),
            _value(run.last_value),
        ]
        table.add_row(*cells, *([Text(_params(run.params))] if wide else []))
    return table


def confirmed_table(confirmed: list[Confirmed]) -> Table:
    """Per confirmed configuration: its search run, then n, mean, sd, min, mean - SE and the
    per-class means over its confirmation runs (the search run left out: it was selected)."""
    table = Table(
        title="confirmed configurations (over confirmation seeds; --pick confirmed ranks by mean - SE)",
        title_justify="left",
    )
    for column in ("trial", "search", "n", "mean", "sd", "min", "mean-SE", "pending", "failed", "IoU per class (mean)"):
        table.add_column(column, justify="left" if column.startswith("IoU") else "right")
    for c in confirmed:
        per_class = " ".join(f"{k}={'n/a' if v is None else _value(v)}" for k, v in c.per_class_iou.items()) or "-"
        table.add_row(
            str(c.number),
            _value(c.search_miou),
            str(c.n),
            _value(c.mean),
            _value(c.sd),
            _value(c.minimum),
            _value(c.score),
            str(c.pending),
            str(c.failed),
            per_class,
        )
    return table


def printable(text: str) -> str:
    """``text`` with control and format characters (ESC, bidi overrides) shown as escapes.

    Study names, hosts and parameter values come from the database, where anyone with access
    can write anything; raw, an ESC sequence would drive the user's terminal. Rich markup is
    the other half: cells are passed as ``Text`` and lines with ``markup=False``.
    """
    return "".join(
        ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch) in ("Cc", "Cf") else ch for ch in text
    )


def format_age(seconds: float | None) -> str:
    """``42s``, ``7m05s``, ``3h12m``, ``2d04h``: short enough for a table cell."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _when(iso: str | None) -> str:
    """``2026-11-24 11:29`` from an ISO timestamp (UTC as recorded); the raw text if unparsable
    (to be shown through :func:`printable`, as every text from the database)."""
    if not iso:
        return "-"
    try:
        return datetime.datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return iso


def _wrap(text: str, width: int, indent: int, hang: int = 0) -> str:
    pad = " " * indent
    return textwrap.fill(
        text,
        width=max(40, width),
        initial_indent=pad,
        subsequent_indent=pad + " " * hang,
        break_long_words=False,
        break_on_hyphens=False,
    )


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _params(params: Mapping[str, Any]) -> str:
    def short(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return printable(", ".join(f"{k}={short(v)}" for k, v in params.items())) or "-"


__all__ = [
    "FINISHED",
    "STATES",
    "WIDE",
    "BestTrial",
    "Front",
    "RunningTrial",
    "StatusData",
    "StatusSummary",
    "StudyRow",
    "confirmed_table",
    "format_age",
    "list_studies",
    "print_status",
    "print_study_list",
    "printable",
    "read_status",
    "render_status",
    "summarize",
]
