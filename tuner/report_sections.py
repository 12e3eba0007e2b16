"""The HTML of each section of ``tuner report``, by section id (:data:`tuner.report.SECTIONS`).

Each section is a figure (:mod:`tuner.report_figures`, :mod:`tuner.report_params`), a table,
or a note saying why there is nothing to show yet; what cannot be shown is a note, never an
error. Parameter importance is PED-ANOVA, computed by Optuna on a read-only snapshot of the
trials (:class:`storage.snapshot.SnapshotStorage`): on 5,000 trials it takes a fraction of a
second where fANOVA trains a random forest for seconds (docs/benchmarks.md).
"""

from __future__ import annotations

import base64
import html
from typing import Any
import warnings

from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from contract import trial_attrs as attrs
from contract.confirm import Confirmed
from tuner import report_figures as figs
from tuner import report_params as param_figs
from tuner.report_data import ReportData
from tuner.report_figures import CLASS_NAMES
from tuner.report_figures import complete as complete_trials
from tuner.report_header import METRIC_NAME, best_values, header_rows
from tuner.report_plotly import Figure, to_div

TOP_SLICES = 4  # parameters in the slice plot
TOP_PARALLEL = 6  # parameters in the parallel-coordinates plot
_NOT_YET = "no completed trial yet"


class Figures:
    """Puts figures on the page in order: ``figure-1``, ``figure-2``, ... (``count`` so far)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, fig: Figure) -> str:
        self.count += 1
        return to_div(fig, f"figure-{self.count}")


def bodies(data: ReportData, figure: Figures) -> dict[str, str]:
    """Every section's HTML by id; a study of one objective has no ``pareto`` section."""
    from storage.snapshot import SnapshotStorage

    head, trials = data.head, data.trials
    complete = complete_trials(trials)
    # Importance and Optuna's plot read the trials as a study: without values they cannot place.
    drawn = {t.number for t in complete}
    placeable = [t for t in trials if t.state != TrialState.COMPLETE or t.number in drawn]
    study = SnapshotStorage(head.study_name, head.directions, placeable).study()
    maximize = head.directions[0] == StudyDirection.MAXIMIZE

    body = {"header": table(header_rows(data))}
    pareto = _pareto_section(data, study, bool(complete), figure)
    if pareto is not None:
        body["pareto"] = pareto
    body["history"] = (
        figure(figs.history_by_number(trials, maximize)) + figure(figs.history_by_time(trials, maximize))
        if complete
        else note(_NOT_YET)
    )
    body["parallelism"] = _parallelism_section(data, figure)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    body["curves"] = (
        figure(figs.learning_curves(trials))
        if any(t.intermediate_values for t in finished)
        else note("no epoch values reported yet")
    )
    body["importance"], body["params"] = _parameter_sections(study, trials, complete, maximize, figure)
    body["per-class"] = (
        figure(figs.per_class_iou(data.top)) + _per_class_table(data.top) if data.top else note(_NOT_YET)
    )
    body["confirmed"] = (
        _confirmed_table(data.confirmed)
        if data.confirmed
        else note(
            f"no configuration confirmed yet: `tuner confirm {head.study_name} --top K --seeds S` "
            "re-runs the best ones with more seeds"
        )
    )
    body["best"] = _best_section(data, figure)
    body["config"] = _config_section(data)
    return body


def importances(study: Any, n_complete: int) -> tuple[dict[str, float], str]:
    """PED-ANOVA importances for the first objective (mIoU), most important first; with a note
    when there are none, or when PED-ANOVA warned (its warnings belong on the page, not stderr)."""
    if n_complete < 2:
        return {}, "importance needs at least 2 completed trials"
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    target = None
    if len(study.directions) > 1:
        # With an explicit target PED-ANOVA explains *low* values: negate a maximised objective.
        sign = -1.0 if study.directions[0] == StudyDirection.MAXIMIZE else 1.0
        target = lambda t: sign * t.values[0]  # noqa: E731
    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always", UserWarning)
            warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes", category=UserWarning)
            values = get_param_importances(study, evaluator=PedAnovaImportanceEvaluator(), target=target)
    except (ValueError, RuntimeError) as exc:  # e.g. no parameter varied
        return {}, f"importance not computable: {str(exc).splitlines()[0]}"
    if not values:
        return {}, "no searched parameter"
    said = {" ".join(str(w.message).split()) for w in warned if issubclass(w.category, UserWarning)}
    return dict(values), "; ".join(f"PED-ANOVA: {s}" for s in sorted(said))


def table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="header">{body}</table>'


def note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _pareto_section(data: ReportData, study: Any, any_complete: bool, figure: Figures) -> str | None:
    """Two objectives: mIoU against cost with the pick; three: Optuna's plot; more: a note."""
    n = len(data.head.directions)
    if n == 2:
        return (
            figure(figs.pareto(data.trials, data.objectives[1], data.front, data.best, str(data.pick)))
            if any_complete
            else note(_NOT_YET)
        )
    if n == 3:
        names = [figs.METRIC] + [f"objective {i}" for i in range(1, n)]
        return figure(figs.pareto_optuna(study, names)) if any_complete else note(_NOT_YET)
    if n > 3:
        return note(
            f"a front of {n} objectives is not drawn (2 or 3 can be); "
            f"the figures below show the first objective, {figs.METRIC}"
        )
    return None


def _parameter_sections(
    study: Any, trials: list[FrozenTrial], complete: list[FrozenTrial], maximize: bool, figure: Figures
) -> tuple[str, str]:
    """(importance, top parameters): the importance bars, then slices and parallel coordinates
    of the most important parameters; one note for both when importance is not computable."""
    values, why = importances(study, len(complete))
    if not values:
        return note(why), note(why)
    top = list(values)
    importance = figure(param_figs.importance(values, "PED-ANOVA")) + (note(why) if why else "")
    best = sorted(complete, key=lambda t: t.values[0], reverse=maximize)[: param_figs.PARALLEL_BEST]
    params = figure(param_figs.slices(trials, top[:TOP_SLICES])) + figure(
        param_figs.parallel(best, top[:TOP_PARALLEL], maximize, len(complete))
    )
    return importance, params


def _parallelism_section(data: ReportData, figure: Figures) -> str:
    from tuner import report_parallelism

    view = report_parallelism.summarize(data.trials, data.now)
    if view is None:
        return note("no trial has started yet")
    return table(report_parallelism.rows(view)) + figure(report_parallelism.figure(view))


def _per_class_table(trials: list[FrozenTrial]) -> str:
    head = "".join(f"<th>{CLASS_NAMES[c]}</th>" for c in (1, 2, 3, 4))
    rows = []
    for trial in trials:
        per_class = attrs.per_class_iou_of(trial)
        cells = "".join(
            f"<td>{'n/a' if per_class.get(str(c)) is None else f'{per_class[str(c)]:.4f}'}</td>" for c in (1, 2, 3, 4)
        )
        rows.append(f"<tr><td>{trial.number}</td><td>{trial.values[0]:.4f}</td>{cells}</tr>")
    return f'<table class="iou"><tr><th>trial</th><th>{METRIC_NAME}</th>{head}</tr>' + "".join(rows) + "</table>"


def _confirmed_table(confirmed: list[Confirmed]) -> str:
    """Per confirmed configuration: n, mean, sd, min, mean - SE and per-class means over its
    confirmation runs (its search run apart: it was selected for scoring high)."""

    def v(x: float | None) -> str:
        return "-" if x is None else f"{x:.4f}"

    names = "".join(f"<th>{CLASS_NAMES[c]} (mean)</th>" for c in (1, 2, 3, 4))
    rows = []
    for c in confirmed:
        per_class = "".join(
            f"<td>{'n/a' if c.per_class_iou.get(str(k)) is None else v(c.per_class_iou[str(k)])}</td>"
            for k in (1, 2, 3, 4)
        )
        rows.append(
            f"<tr><td>{c.number}</td><td>{v(c.search_miou)}</td><td>{c.n}</td><td>{v(c.mean)}</td>"
            f"<td>{v(c.sd)}</td><td>{v(c.minimum)}</td><td>{v(c.score)}</td><td>{c.pending}</td>"
            f"<td>{c.failed}</td>{per_class}</tr>"
        )
    text = note(
        "Statistics over each configuration's confirmation seeds (tuner confirm); the search run is "
        "shown apart, as it was chosen for scoring high. --pick confirmed takes the highest mean "
        "minus one standard error (sd / sqrt(n))."
    )
    return (
        text + '<table class="iou"><tr><th>trial</th><th>search run</th><th>n</th><th>mean</th><th>sd</th>'
        f"<th>min</th><th>mean - SE</th><th>pending</th><th>failed</th>{names}</tr>" + "".join(rows) + "</table>"
    )


def _best_section(data: ReportData, figure: Figures) -> str:
    best = data.best
    if best is None:
        return note(_NOT_YET)
    parts = [f"<p>trial {best.number}: {html.escape(best_values(data))}</p>"]
    matrix = attrs.confusion_matrix_of(best)
    if matrix is not None:
        parts.append(figure(figs.confusion(matrix, best.number)))
    elif attrs.CONFUSION_MATRIX in best.user_attrs:
        parts.append(note("the confusion matrix recorded for this trial is not a square table of pixel counts"))
    else:
        parts.append(note("no confusion matrix recorded for this trial (older worker)"))
    if data.preview_png is not None:
        encoded = base64.b64encode(data.preview_png).decode("ascii")
        parts.append(
            '<figure><img class="preview" alt="validation images: image, truth, prediction" '
            f'src="data:image/png;base64,{encoded}"><figcaption>validation images of trial '
            f"{best.number}: image, truth, prediction. {_legend()}</figcaption></figure>"
        )
    else:
        parts.append(note(f"validation images: {data.preview_note}"))
    return "\n".join(parts)


def _legend() -> str:
    return " ".join(
        f'<span class="swatch" style="background: rgb{attrs.CLASS_COLOURS[c]}"></span>{CLASS_NAMES[c]}'
        for c in range(len(attrs.CLASS_COLOURS))
    )


def _config_section(data: ReportData) -> str:
    from contract.config import ConfigError, TrainConfig
    from tuner.export import config_of
    from tuner.export import render as render_config

    best = data.best
    if best is None:
        return note(_NOT_YET)
    try:
        if data.spec is not None:
            config = config_of(best, data.spec)
        elif attrs.config_of(best) is not None:
            config = TrainConfig.from_dict(attrs.config_of(best))  # type: ignore[arg-type]
        else:
            return note("no recorded config and no search space to rebuild it from")
    except ConfigError as exc:
        return note(str(exc))
    text = render_config(
        config, "yaml", study_name=data.head.study_name, trial=best, pick=data.pick, objectives=data.objectives
    )
    return f'<pre class="config">{html.escape(text)}</pre>'


__all__ = ["Figures", "bodies", "importances", "note", "table"]
