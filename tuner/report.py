"""``tuner report``: one self-contained HTML file about a study, to read, send and archive.

The file needs no server and no network: plotly.js is inlined once in the head and every plot
is a plotly figure in the page; the best trial's validation images (a PNG the worker uploaded as
an artifact) are embedded as a data URI. Sections, in order (their HTML ids in brackets):
the study header [header], the Pareto front for several objectives [pareto], optimisation
history [history], learning curves [curves], parameter importance [importance], slices and
parallel coordinates of the top parameters [params], per-class IoU of the 10 best trials
[per-class], the best trial's confusion matrix and validation images [best], and the best
configuration as ``tuner export`` writes it [config]. After the history: trials in flight and
near-duplicate suggestions [parallelism] (:mod:`tuner.report_parallelism`).

This module writes the page; the study is read once (:mod:`tuner.report_data`), the header's rows
come from :mod:`tuner.report_header`, each section's HTML from :mod:`tuner.report_sections` and
the figures from :mod:`tuner.report_figures`.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import gc
import html
from pathlib import Path
import warnings

from contract.atomic import writable_problem
from contract.pareto import Pick
from tuner.report_data import ReportData, read_report
from tuner.study import StudyError

#: Every section of the report, in order: (HTML id, heading).
SECTIONS = (
    ("header", "Study"),
    ("pareto", "Pareto front"),
    ("history", "Optimisation history"),
    ("parallelism", "Parallelism"),
    ("curves", "Learning curves"),
    ("importance", "Parameter importance"),
    ("params", "Top parameters"),
    ("per-class", "IoU per class"),
    ("confirmed", "Confirmed configurations"),
    ("best", "Best trial"),
    ("config", "Best configuration"),
)


def write_report(
    name: str, *, storage_url: str | None, output: Path, artifact_dir: Path | None = None, pick: Pick | str = Pick()
) -> Path:
    """Read study ``name`` and write its report to ``output`` (atomically).

    Raises:
        StudyError: no such study, unwritable output, a Pareto ``pick`` for a study with one objective.
        PickError: ``pick`` is not a pick rule.
        ConfirmError: ``--pick confirmed`` before any configuration has its confirmation runs.
        StorageError: unreachable database or no schema.
    """
    from tuner.export import write_atomic

    pick = Pick.parse(pick)
    problem = writable_problem(output)
    if problem is not None:
        raise StudyError(f"cannot write {output}: {problem}")
    with _no_cyclic_gc():
        page = render(read_report(name, storage_url, artifact_dir, pick))
    write_atomic(output, page)
    return output


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while the report's objects are made.

    Reading 5,000 trials makes about a million objects that all live until the page is written:
    each collection would scan them for nothing (a fifth of the read time; docs/benchmarks.md).
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def render(data: ReportData) -> str:
    """The whole HTML page."""
    from optuna.exceptions import ExperimentalWarning

    from tuner.report_sections import Figures, bodies

    figure = Figures()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # PED-ANOVA is "experimental" in Optuna
        body = bodies(data, figure)
    return _page(data, body, figure.count)


def _page(data: ReportData, body: dict[str, str], n_figures: int) -> str:
    """The sections of ``body`` in :data:`SECTIONS` order, with a title, a menu, the style and plotly.js."""
    nav = " · ".join(f'<a href="#{sid}">{html.escape(title)}</a>' for sid, title in SECTIONS if sid in body)
    sections = "\n".join(
        f'<section id="{sid}"><h2>{html.escape(title)}</h2>\n{body[sid]}\n</section>'
        for sid, title in SECTIONS
        if sid in body
    )
    title = f"tuner report: {data.head.study_name}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="generator" content="mars-tuner report">
<title>{html.escape(title)}</title>
<style>{_CSS}</style>
<script type="text/javascript">{_plotly_js()}</script>
</head>
<body data-figures="{n_figures}">
<h1>{html.escape(title)}</h1>
<p class="meta">written {data.now:%Y-%m-%d %H:%M} UTC from {html.escape(data.masked_url)}</p>
<nav>{nav}</nav>
{sections}
</body>
</html>
"""


def _plotly_js() -> str:
    """plotly.js as plotly ships it (what ``plotly.offline.get_plotlyjs`` reads, without its imports)."""
    from importlib import resources

    return (resources.files("plotly") / "package_data" / "plotly.min.js").read_text(encoding="utf-8")


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
nav { margin-bottom: 1.5em; } nav a { color: #1f77b4; }
section { margin: 2em 0; border-top: 1px solid #ddd; }
table { border-collapse: collapse; } th, td { padding: 2px 10px; text-align: left; }
table.header th { color: #555; font-weight: normal; } table.iou td { text-align: right; }
p.note { color: #777; font-style: italic; } p.meta { color: #777; }
pre.config { background: #f6f6f6; padding: 1em; overflow-x: auto; }
span.swatch { display: inline-block; width: 1em; height: 1em; margin: 0 0.3em 0 0.8em;
              vertical-align: middle; border: 1px solid #999; }
img.preview { image-rendering: pixelated; max-width: 100%; border: 1px solid #ccc; }
"""

__all__ = ["SECTIONS", "ReportData", "read_report", "render", "write_report"]
