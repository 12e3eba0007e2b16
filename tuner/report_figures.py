"""The plots of ``tuner report``, as plotly figures given to plotly.js as plain data.

A figure here is the dict plotly.js draws (:mod:`tuner.report_plotly`: why plain data, the
report's look, typed arrays). Optuna's own plot is used for one rare case only, the Pareto front
of more than two objectives. The others add what Optuna's plots lack (history over wall-clock
time, learning curves as one trace per state, per-class IoU, confusion matrix, the
mIoU-against-cost front with its pick); the parameter figures, which follow Optuna's, are in
:mod:`tuner.report_params`.

Every builder takes trials already read (:func:`storage.trial_reader.load_trials`); none touches
the database.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
import json
import math
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState

from tuner.report_plotly import (
    BLUE_SCALE,
    COLORS,
    Figure,
    counting,
    curve_opacity,
    finite_or_none,
    marker_size,
    new_figure,
    numbers,
)

if TYPE_CHECKING:
    import optuna

CLASS_NAMES = {0: "background", 1: "soil", 2: "bedrock", 3: "sand", 4: "big rock"}
METRIC = "validation mIoU"


def complete(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """The COMPLETE trials whose values are all finite numbers: what is ranked and drawn (plain
    Optuna stores ``inf``, which no axis or colour scale can place)."""
    return [
        t for t in trials if t.state == TrialState.COMPLETE and t.values and all(math.isfinite(v) for v in t.values)
    ]


# -- history and learning curves ----------------------------------------------------------------


def history_by_number(trials: Sequence[FrozenTrial], maximize: bool) -> Figure:
    """Each COMPLETE trial's value by trial number, and the best so far."""
    done = sorted(complete(trials), key=lambda t: t.number)
    fig = _history(done, numbers(t.number for t in done), maximize, "trial", "best so far, by trial number")
    fig["layout"]["xaxis"].update(counting(t.number for t in done))
    return fig


def history_by_time(trials: Sequence[FrozenTrial], maximize: bool) -> Figure:
    """Each COMPLETE trial's value at the time it finished, and the best so far."""
    done = sorted((t for t in complete(trials) if t.datetime_complete), key=lambda t: t.datetime_complete)  # type: ignore[arg-type, return-value]
    fig = _history(
        done, [t.datetime_complete for t in done], maximize, "finished at (UTC)", "best so far, over wall-clock time"
    )
    fig["layout"]["xaxis"]["type"] = "date"
    return fig


def _history(done: Sequence[FrozenTrial], x: Any, maximize: bool, x_title: str, title: str) -> Figure:
    """``done`` trials' values (markers) and the best so far (a step line) against ``x``."""
    values = [t.values[0] for t in done]
    best, so_far = [], -math.inf if maximize else math.inf
    for v in values:
        so_far = max(so_far, v) if maximize else min(so_far, v)
        best.append(so_far)
    return new_figure(
        [
            {
                "type": "scatter",
                "x": x,
                "y": numbers(values),
                "mode": "markers",
                "name": METRIC,
                "marker": {"size": marker_size(len(done)), "opacity": 0.6, "color": COLORS[TrialState.COMPLETE]},
            },
            {
                "type": "scatter",
                "x": x,
                "y": numbers(best),
                "mode": "lines",
                "name": "best so far",
                "line": {"shape": "hv", "color": "#ff7f0e"},
            },
        ],
        title,
        x_title,
        METRIC,
    )


def learning_curves(trials: Sequence[FrozenTrial]) -> Figure:
    """Per-epoch validation mIoU of every finished trial; pruned ones end in a cross where cut.

    One trace per state, with the curves separated by gaps (null), so 5,000 trials stay a
    figure of a few arrays instead of 5,000 traces.
    """
    traces: list[dict[str, Any]] = []
    drawn = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.intermediate_values]
    opacity = curve_opacity(len(drawn))
    for state in (TrialState.COMPLETE, TrialState.PRUNED):
        xs: list[float | None] = []
        ys: list[float | None] = []
        ends: list[tuple[int, float, int]] = []
        for trial in trials:
            if trial.state != state or not trial.intermediate_values:
                continue
            steps = sorted(trial.intermediate_values)
            xs.extend(steps)
            ys.extend(finite_or_none(trial.intermediate_values[s]) for s in steps)
            xs.append(None)
            ys.append(None)
            ends.append((steps[-1], finite_or_none(trial.intermediate_values[steps[-1]]), trial.number))
        if not ends:
            continue
        label = "complete" if state == TrialState.COMPLETE else "pruned"
        traces.append(
            {
                "type": "scatter",
                "x": numbers(xs, "f4"),
                "y": numbers(ys, "f4"),
                "mode": "lines",
                "name": label,
                "line": {"width": 1.5, "color": COLORS[state]},
                "opacity": opacity,
                "hoverinfo": "skip",
                "connectgaps": False,
            }
        )
        if state == TrialState.PRUNED:
            traces.append(
                {
                    "type": "scatter",
                    "x": numbers(e[0] for e in ends),
                    "y": numbers(e[1] for e in ends),
                    "mode": "markers",
                    "name": "pruned here",
                    "marker": {"symbol": "x", "size": 6, "color": COLORS[state]},
                    "text": [f"trial {e[2]} pruned after epoch {e[0]}" for e in ends],
                    "hoverinfo": "text",
                }
            )
    epochs = [s for t in drawn for s in (min(t.intermediate_values), max(t.intermediate_values))]
    return new_figure(traces, "learning curves", "epoch", METRIC, xaxis=counting(epochs))


# -- several objectives -------------------------------------------------------------------------

#: Axis titles of the cost objectives (``contract.study_spec.Objective``).
COST_TITLES = {
    "params": "parameters",
    "latency": "inference ms per image",
    "minimize": "objective 1",
    "maximize": "objective 1",
}
_HOVER = "%{{text}}<br>" + METRIC + " %{{y:.4f}}<br>{0} %{{x:,.4g}}<extra></extra>"


def pareto(
    trials: Sequence[FrozenTrial], cost: str, front: Sequence[FrozenTrial], picked: FrozenTrial | None, pick: str
) -> Figure:
    """mIoU against cost: every COMPLETE trial, the Pareto front as a step line, the pick starred.

    Built here rather than with Optuna's ``plot_pareto_front`` so the front reads as a frontier
    (joined in cost order) and the trial ``tuner export --pick`` writes is marked.
    """
    done = [t for t in complete(trials) if len(t.values) == 2]
    on_front = {t.number for t in front}
    rest = [t for t in done if t.number not in on_front]
    title = COST_TITLES.get(cost, cost)
    hover = _HOVER.format(title)

    def xy(group: Sequence[FrozenTrial]) -> dict[str, Any]:
        return {
            "x": numbers(t.values[1] for t in group),
            "y": numbers(t.values[0] for t in group),
            "text": [f"trial {t.number}" for t in group],
            "hovertemplate": hover,
            "type": "scatter",
        }

    traces = [
        {
            **xy(rest),
            "mode": "markers",
            "name": "dominated",
            "marker": {"size": marker_size(len(done)), "opacity": 0.5, "color": "#9ecae1"},
        },
        {
            **xy(front),
            "mode": "lines+markers",
            "name": "Pareto front",
            "line": {"shape": "hv", "color": COLORS[TrialState.COMPLETE]},
            "marker": {"size": marker_size(len(done)) + 2, "color": COLORS[TrialState.COMPLETE]},
        },
    ]
    if picked is not None:
        traces.append(
            {
                **xy([picked]),
                "mode": "markers",
                "name": f"picked ({pick})",
                "marker": {"symbol": "star", "size": 16, "color": "#ff7f0e", "line": {"width": 1, "color": "#333"}},
            }
        )
    fig = new_figure(
        traces, f"Pareto front: {METRIC} against {title} ({len(front)} of {len(done)} complete trials)", title, METRIC
    )
    if cost == "params" and done and min(t.values[1] for t in done) > 0:
        fig["layout"]["xaxis"]["type"] = "log"  # parameter counts span orders of magnitude
    return fig


def pareto_optuna(study: optuna.Study, names: list[str]) -> Figure:
    """More than two objectives (studies not made by ``tuner create``): Optuna's own plot, as
    plotly serialises it (its numpy arrays become typed arrays, as in
    :func:`tuner.report_plotly.numbers`)."""
    from optuna.visualization import plot_pareto_front

    fig = json.loads(plot_pareto_front(study, target_names=names).to_json())
    fig["layout"].update(title={"text": "Pareto front"}, plot_bgcolor="white", paper_bgcolor="white")
    return {"data": fig["data"], "layout": fig["layout"]}


# -- the best trials ----------------------------------------------------------------------------


def per_class_iou(trials: Sequence[FrozenTrial]) -> Figure:
    """Grouped bars: IoU of each foreground class, for each of the given (best) trials."""
    from contract.trial_attrs import per_class_iou_of

    labels = [f"#{t.number}" for t in trials]
    per_class = [per_class_iou_of(t) for t in trials]
    bars = []
    for c in (1, 2, 3, 4):
        values = [p.get(str(c)) for p in per_class]
        bars.append({"type": "bar", "x": labels, "y": numbers(values), "name": CLASS_NAMES[c]})
    return new_figure(
        bars,
        f"IoU per class, {len(trials)} best trials",
        "trial (best first)",
        "IoU",
        barmode="group",
        xaxis={"type": "category"},
        yaxis={"range": [0, 1]},
    )


def confusion(matrix: list[list[float]], trial_number: int) -> Figure:
    """Row-normalised confusion matrix (share of each true class), counts on hover."""
    names = [CLASS_NAMES.get(i, str(i)) for i in range(len(matrix))]
    shares = []
    for row in matrix:
        total = sum(row)
        shares.append([n / total if total else None for n in row])
    text = [[f"{s:.2f}" if s is not None else "" for s in row] for row in shares]
    return new_figure(
        [
            {
                "type": "heatmap",
                "z": shares,
                "x": names,
                "y": names,
                "colorscale": BLUE_SCALE,
                "zmin": 0,
                "zmax": 1,
                "text": text,
                "texttemplate": "%{text}",
                "customdata": matrix,
                "hovertemplate": "true %{y}, predicted %{x}: %{customdata} pixels<extra></extra>",
            }
        ],
        f"confusion matrix of trial {trial_number} (share of each true class)",
        "predicted",
        "true",
        yaxis={"autorange": "reversed"},
    )
