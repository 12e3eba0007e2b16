"""The plots of ``tuner report``, as plotly figures.

Optuna's own plots (``optuna.visualization``) are used where they stay fast at thousands of
trials: parameter importance, the Pareto front of more than two objectives, and parallel
coordinates of the best trials only (Optuna draws one plotly trace per trial there). The others
are plotly figures built here from numpy arrays: Optuna has none for some (history over
wall-clock time, per-class IoU, confusion matrix, the mIoU-against-cost front with its pick), and at 5,000 trials Optuna's history and slice plots cost seconds of plotly validating
Python lists and its learning-curve plot makes one trace per trial (here all curves of one state
are one trace, separated by gaps).

Every builder takes trials already read (:func:`storage.summaries.load_trials`) or a snapshot
study (:class:`storage.snapshot.SnapshotStorage`); none touches the database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
import contextlib
import math
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState

if TYPE_CHECKING:
    import optuna
    import plotly.graph_objects as go

CLASS_NAMES = {0: "background", 1: "soil", 2: "bedrock", 3: "sand", 4: "big rock"}
METRIC = "validation mIoU"
#: Parallel coordinates draw one trace per trial (Optuna's plot): only the best ones.
PARALLEL_BEST = 100
_COLORS = {TrialState.COMPLETE: "#1f77b4", TrialState.PRUNED: "#d62728"}


def target_of(directions: int) -> Callable[[FrozenTrial], float] | None:
    """Optuna's plots need an explicit target when a study has several objectives: mIoU (0)."""
    return None if directions == 1 else (lambda t: t.values[0])


def history_by_number(trials: Sequence[FrozenTrial], maximize: bool) -> go.Figure:
    """Each COMPLETE trial's value by trial number, and the best so far."""
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.values), key=lambda t: t.number)
    return _history(done, [t.number for t in done], float, maximize, "trial", "best so far, by trial number")


def history_by_time(trials: Sequence[FrozenTrial], maximize: bool) -> go.Figure:
    """Each COMPLETE trial's value at the time it finished, and the best so far."""
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.values and t.datetime_complete),
                  key=lambda t: t.datetime_complete)  # type: ignore[arg-type, return-value]
    return _history(done, [t.datetime_complete for t in done], "datetime64[ms]", maximize,
                    "finished at (UTC)", "best so far, over wall-clock time")


def _history(done: Sequence[FrozenTrial], x: list[Any], x_dtype: Any, maximize: bool, x_title: str,
             title: str) -> go.Figure:
    """``done`` trials' values (markers) and the best so far (a step line) against ``x``."""
    import numpy as np
    import plotly.graph_objects as go

    xs = np.asarray(x, dtype=x_dtype)
    values = np.asarray([t.values[0] for t in done], dtype=float)
    best = np.maximum.accumulate(values) if maximize else np.minimum.accumulate(values)
    fig = go.Figure([
        go.Scatter(x=xs, y=values, mode="markers", name=METRIC,
                   marker={"size": _marker(len(done)), "opacity": 0.6, "color": _COLORS[TrialState.COMPLETE]}),
        go.Scatter(x=xs, y=best, mode="lines", name="best so far", line={"shape": "hv", "color": "#ff7f0e"}),
    ])
    fig.update_layout(xaxis_title=x_title, yaxis_title=METRIC)
    return _titled(fig, title)


def learning_curves(trials: Sequence[FrozenTrial]) -> go.Figure:
    """Per-epoch validation mIoU of every finished trial; pruned ones end in a cross where cut.

    One trace per state, with the curves separated by gaps (NaN), so 5,000 trials stay a
    figure of a few arrays instead of 5,000 traces.
    """
    import numpy as np
    import plotly.graph_objects as go

    traces = []
    for state in (TrialState.COMPLETE, TrialState.PRUNED):
        xs: list[float] = []
        ys: list[float] = []
        ends: list[tuple[int, float, int]] = []
        for trial in trials:
            if trial.state != state or not trial.intermediate_values:
                continue
            steps = sorted(trial.intermediate_values)
            xs.extend(steps)
            ys.extend(trial.intermediate_values[s] for s in steps)
            xs.append(math.nan)
            ys.append(math.nan)
            ends.append((steps[-1], trial.intermediate_values[steps[-1]], trial.number))
        if not ends:
            continue
        label = "complete" if state == TrialState.COMPLETE else "pruned"
        traces.append(go.Scatter(
            x=np.asarray(xs, dtype=float), y=np.asarray(ys, dtype=float), mode="lines", name=label,
            line={"width": 1, "color": _COLORS[state]}, opacity=0.25, hoverinfo="skip", connectgaps=False,
        ))
        if state == TrialState.PRUNED:
            traces.append(go.Scatter(
                x=np.asarray([e[0] for e in ends], dtype=float), y=np.asarray([e[1] for e in ends], dtype=float),
                mode="markers", name="pruned here", marker={"symbol": "x", "size": 6, "color": _COLORS[state]},
                text=[f"trial {e[2]} pruned after epoch {e[0]}" for e in ends], hoverinfo="text",
            ))
    fig = go.Figure(traces)
    fig.update_layout(xaxis_title="epoch", yaxis_title=METRIC)
    return _titled(fig, "learning curves")


def importance(study: optuna.Study, importances: dict[str, float], evaluator_name: str) -> go.Figure:
    """Optuna's importance bar chart, of importances computed once by the caller."""
    from optuna.importance import BaseImportanceEvaluator
    from optuna.visualization import plot_param_importances

    class Fixed(BaseImportanceEvaluator):
        def evaluate(self, study: Any, params: Any = None, *, target: Any = None) -> dict[str, float]:
            return dict(importances)

    fig = plot_param_importances(study, evaluator=Fixed(), target=target_of(len(study.directions)),
                                 target_name=METRIC)
    return _titled(fig, f"parameter importance ({evaluator_name})")


def slices(trials: Sequence[FrozenTrial], params: list[str]) -> go.Figure:
    """Value against each parameter (one panel per parameter), coloured by trial number."""
    import numpy as np
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    fig = make_subplots(rows=1, cols=len(params), shared_yaxes=True, subplot_titles=params,
                        horizontal_spacing=0.03)
    for col, name in enumerate(params, start=1):
        having = [t for t in done if name in t.params]
        dist = having[0].distributions[name] if having else None
        raw = [t.params[name] for t in having]
        x = np.asarray([str(v) for v in raw], dtype=object) if isinstance(dist, CategoricalDistribution) \
            else np.asarray(raw, dtype=float)
        fig.add_trace(go.Scatter(
            x=x, y=np.asarray([t.values[0] for t in having], dtype=float), mode="markers", showlegend=False,
            marker={"size": _marker(len(having)), "opacity": 0.6, "color": np.asarray([t.number for t in having], dtype=float),
                    "colorscale": "Blues", "showscale": col == 1, "colorbar": {"title": {"text": "trial"}}},
            name=name,
        ), row=1, col=col)
        if isinstance(dist, (FloatDistribution, IntDistribution)) and dist.log:
            fig.update_xaxes(type="log", row=1, col=col)
        elif isinstance(dist, CategoricalDistribution):
            fig.update_xaxes(type="category", categoryorder="array",
                             categoryarray=[str(c) for c in dist.choices], row=1, col=col)
    fig.update_yaxes(title_text=METRIC, row=1, col=1)
    return _titled(fig, "slices of the most important parameters (complete trials)")


def parallel(study: optuna.Study, params: list[str], shown: int, of: int) -> go.Figure:
    from optuna.visualization import plot_parallel_coordinate

    fig = plot_parallel_coordinate(study, params=params, target=target_of(len(study.directions)),
                                   target_name=METRIC)
    return _titled(fig, f"parallel coordinates of the {shown} best of {of} complete trials")


#: Axis titles of the cost objectives (``contract.study_spec.Objective``).
COST_TITLES = {"params": "parameters", "latency": "inference ms per image", "minimize": "objective 1",
               "maximize": "objective 1"}


def pareto(trials: Sequence[FrozenTrial], cost: str, front: Sequence[FrozenTrial],
           picked: FrozenTrial | None, pick: str) -> go.Figure:
    """mIoU against cost: every COMPLETE trial, the Pareto front as a step line, the pick starred.

    Built here rather than with Optuna's ``plot_pareto_front`` so the front reads as a frontier
    (joined in cost order) and the trial ``tuner export --pick`` writes is marked.
    """
    import numpy as np
    import plotly.graph_objects as go

    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values and len(t.values) == 2]
    on_front = {t.number for t in front}
    rest = [t for t in done if t.number not in on_front]
    title = COST_TITLES.get(cost, cost)

    def xy(group: Sequence[FrozenTrial]) -> dict[str, Any]:
        return {"x": np.asarray([t.values[1] for t in group], dtype=float),
                "y": np.asarray([t.values[0] for t in group], dtype=float),
                "text": [f"trial {t.number}" for t in group]}

    traces = [
        go.Scatter(**xy(rest), mode="markers", name="dominated", hovertemplate=_HOVER.format(title),
                   marker={"size": _marker(len(done)), "opacity": 0.5, "color": "#9ecae1"}),
        go.Scatter(**xy(front), mode="lines+markers", name="Pareto front", hovertemplate=_HOVER.format(title),
                   line={"shape": "hv", "color": _COLORS[TrialState.COMPLETE]},
                   marker={"size": _marker(len(done)) + 2, "color": _COLORS[TrialState.COMPLETE]}),
    ]
    if picked is not None:
        traces.append(go.Scatter(**xy([picked]), mode="markers", name=f"picked ({pick})",
                                 hovertemplate=_HOVER.format(title),
                                 marker={"symbol": "star", "size": 16, "color": "#ff7f0e",
                                         "line": {"width": 1, "color": "#333"}}))
    fig = go.Figure(traces)
    fig.update_layout(xaxis_title=title, yaxis_title=METRIC)
    if cost == "params" and done and min(t.values[1] for t in done) > 0:
        fig.update_xaxes(type="log")  # parameter counts span orders of magnitude
    return _titled(fig, f"Pareto front: {METRIC} against {title} ({len(front)} of {len(done)} complete trials)")


_HOVER = "%{{text}}<br>" + METRIC + " %{{y:.4f}}<br>{0} %{{x:,.4g}}<extra></extra>"


def pareto_optuna(study: optuna.Study, names: list[str]) -> go.Figure:
    """More than two objectives (studies not made by ``tuner create``): Optuna's own plot."""
    from optuna.visualization import plot_pareto_front

    fig = plot_pareto_front(study, target_names=names)
    return _titled(fig, "Pareto front")


def per_class_iou(trials: Sequence[FrozenTrial], per_class_key: str) -> go.Figure:
    """Grouped bars: IoU of each foreground class, for each of the given (best) trials."""
    import plotly.graph_objects as go

    labels = [f"#{t.number}" for t in trials]
    bars = []
    for c in (1, 2, 3, 4):
        values = []
        for trial in trials:
            per_class = trial.user_attrs.get(per_class_key)
            value = per_class.get(str(c)) if isinstance(per_class, dict) else None
            values.append(value)
        bars.append(go.Bar(x=labels, y=values, name=CLASS_NAMES[c]))
    fig = go.Figure(bars)
    fig.update_layout(barmode="group", xaxis_title="trial (best first)", yaxis_title="IoU",
                      xaxis={"type": "category"}, yaxis={"range": [0, 1]})
    return _titled(fig, f"IoU per class, {len(trials)} best trials")


def confusion(matrix: list[list[int]], trial_number: int) -> go.Figure:
    """Row-normalised confusion matrix (share of each true class), counts on hover."""
    import plotly.graph_objects as go

    names = [CLASS_NAMES.get(i, str(i)) for i in range(len(matrix))]
    shares = []
    for row in matrix:
        total = sum(row)
        shares.append([n / total if total else None for n in row])
    text = [[f"{s:.2f}" if s is not None else "" for s in row] for row in shares]
    fig = go.Figure(go.Heatmap(
        z=shares, x=names, y=names, colorscale="Blues", zmin=0, zmax=1, text=text, texttemplate="%{text}",
        customdata=matrix, hovertemplate="true %{y}, predicted %{x}: %{customdata} pixels<extra></extra>",
    ))
    fig.update_layout(xaxis_title="predicted", yaxis_title="true", yaxis={"autorange": "reversed"})
    return _titled(fig, f"confusion matrix of trial {trial_number} (share of each true class)")


#: A light look without loading a plotly template (loading one costs ~0.3 s of CPU); see
#: :func:`no_template`.
_AXIS = {"gridcolor": "#e5e5e5", "zerolinecolor": "#cccccc", "linecolor": "#999999", "automargin": True}


@contextlib.contextmanager
def no_template() -> Iterator[None]:
    """Build figures without plotly's default template (its first use costs ~0.3 s of CPU)."""
    import plotly.io as pio

    previous, pio.templates.default = pio.templates.default, "none"
    try:
        yield
    finally:
        pio.templates.default = previous


def _marker(n: int) -> int:
    """Marker size: visible for a few trials, not a blot for thousands."""
    return 8 if n < 200 else 5 if n < 1000 else 4


def _titled(fig: go.Figure, title: str) -> go.Figure:
    fig.update_layout(title=title, plot_bgcolor="white", paper_bgcolor="white",
                      margin={"l": 60, "r": 20, "t": 50, "b": 50}, font={"family": "system-ui, sans-serif"})
    fig.update_xaxes(**_AXIS)
    fig.update_yaxes(**_AXIS)
    return fig
