"""The report's parameter figures: importance bars, slices and parallel coordinates.

They follow Optuna's ``plot_param_importances``, ``plot_slice`` and
``plot_parallel_coordinate``, drawn as plain plotly.js data (:mod:`tuner.report_plotly`) from
trials already read; none touches the database.
"""

from __future__ import annotations

from collections.abc import Sequence
import math
from typing import Any

from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from tuner.report_figures import METRIC, complete
from tuner.report_plotly import (
    AXIS,
    COLORS,
    TRIAL_BLUES,
    TRIAL_SCALE,
    Figure,
    counting,
    marker_size,
    new_figure,
    numbers,
)

#: Parallel coordinates draw one line (trace) per trial, as Optuna's plot does: only the best ones.
PARALLEL_BEST = 100


def importance(importances: dict[str, float], evaluator_name: str) -> Figure:
    """Horizontal bars, most important on top, as Optuna's ``plot_param_importances`` draws them."""
    names = list(reversed(importances))
    values = [importances[n] for n in names]
    return new_figure(
        [
            {
                "type": "bar",
                "orientation": "h",
                "x": numbers(values),
                "y": names,
                "text": [f"{v:.2f}" if v >= 0.01 else "<0.01" for v in values],
                "textposition": "outside",
                "cliponaxis": False,
                "marker": {"color": COLORS[TrialState.COMPLETE]},
                "hovertemplate": "%{y}: %{x:.4f}<extra></extra>",
            }
        ],
        f"parameter importance ({evaluator_name})",
        f"importance for {METRIC}",
        "parameter",
        yaxis={"type": "category"},
        showlegend=False,
    )


# -- slices -------------------------------------------------------------------------------------


def slices(trials: Sequence[FrozenTrial], params: list[str]) -> Figure:
    """Value against each parameter (one panel per parameter), coloured by trial number."""
    done = complete(trials)
    n, gap = len(params), 0.07  # room for a panel's last tick label before the next panel
    width = (1 - gap * (n - 1)) / n
    traces: list[dict[str, Any]] = []
    layout: dict[str, Any] = {"annotations": [], "showlegend": False}
    for i, name in enumerate(params):
        left = i * (width + gap)
        having = [t for t in done if name in t.params]
        x, layout["xaxis" if i == 0 else f"xaxis{i + 1}"] = _slice_x(having, name, [left, left + width])
        traces.append(
            {
                "type": "scatter",
                "x": x,
                "y": numbers(t.values[0] for t in having),
                "mode": "markers",
                "name": name,
                "xaxis": "x" if i == 0 else f"x{i + 1}",
                "yaxis": "y",
                "text": [f"trial {t.number}" for t in having],
                "marker": {
                    "size": marker_size(len(having)),
                    "opacity": 0.6,
                    "color": numbers(t.number for t in having),
                    "colorscale": TRIAL_SCALE,
                    "showscale": i == 0,
                    "colorbar": {"title": {"text": "trial"}, **counting(t.number for t in done)},
                },
            }
        )
        layout["annotations"].append(
            {
                "text": name,
                "x": left + width / 2,
                "y": 1.0,
                "xref": "paper",
                "yref": "paper",
                "xanchor": "center",
                "yanchor": "bottom",
                "showarrow": False,
                "font": {"size": 14},
            }
        )
    return new_figure(traces, "slices of the most important parameters (complete trials)", "", METRIC, **layout)


def _slice_x(having: Sequence[FrozenTrial], name: str, domain: list[float]) -> tuple[Any, dict[str, Any]]:
    """One slice panel's x values (the trials' ``name``) and its axis, at ``domain`` of the
    width: categories in the space's order, a log axis for a log parameter."""
    dist = having[0].distributions[name] if having else None
    x_axis: dict[str, Any] = {**AXIS, "domain": domain, "anchor": "y", "nticks": 5}
    if isinstance(dist, CategoricalDistribution):
        x_axis.update(type="category", categoryorder="array", categoryarray=[str(c) for c in dist.choices])
        return [str(t.params[name]) for t in having], x_axis
    if isinstance(dist, (FloatDistribution, IntDistribution)) and dist.log:
        x_axis.update(type="log", dtick=1, exponentformat="e")  # a tick per decade: narrow panels
    return numbers(float(t.params[name]) for t in having), x_axis


# -- parallel coordinates -----------------------------------------------------------------------


def parallel(trials: Sequence[FrozenTrial], params: list[str], maximize: bool, of: int) -> Figure:
    """One line per trial through mIoU and ``params`` (each axis scaled to 0-1), as Optuna draws it.

    ``trials`` are the best COMPLETE ones (at most :data:`PARALLEL_BEST`); a trial without one of
    ``params`` (a conditional parameter) is left out, as in Optuna's plot.
    """
    shown = [t for t in trials if all(p in t.params for p in params)]
    axes = [_value_axis(shown)] + [_param_axis(shown, p) for p in params]
    values = [t.values[0] for t in shown]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    traces = [*_parallel_lines(shown, axes, values, maximize), _colour_bar(low, high, maximize)]
    return new_figure(
        traces,
        f"parallel coordinates of the {len(shown)} best of {of} complete trials",
        xaxis={
            "tickmode": "array",
            "tickvals": list(range(len(axes))),
            "ticktext": [a["label"] for a in axes],
            "range": [-0.3, len(axes) - 0.7],
            "showgrid": False,
            "zeroline": False,
        },
        yaxis={"range": [-0.1, 1.1], "visible": False, "fixedrange": True},
        shapes=[
            {
                "type": "line",
                "x0": i,
                "x1": i,
                "y0": 0,
                "y1": 1,
                "line": {"color": "#888", "width": 1},
                "layer": "below",
            }
            for i in range(len(axes))
        ],
        annotations=_axis_ends(axes),
        hovermode="closest",
    )


def _parallel_lines(
    shown: Sequence[FrozenTrial], axes: list[dict[str, Any]], values: list[float], maximize: bool
) -> list[dict[str, Any]]:
    """A line per trial through ``axes``, darker the better, the worst first so the best are drawn
    on top."""
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    traces: list[dict[str, Any]] = []
    for k in sorted(range(len(shown)), key=lambda k: values[k], reverse=not maximize):
        share = (values[k] - low) / (high - low) if high > low else 1.0
        traces.append(
            {
                "type": "scatter",
                "x": list(range(len(axes))),
                "y": [a["scaled"][k] for a in axes],
                "mode": "lines",
                "line": {"color": _blue(share if maximize else 1 - share), "width": 1.5},
                "opacity": 0.8 if len(shown) <= 20 else 0.5,
                "showlegend": False,
                "customdata": [[a["label"], a["text"][k]] for a in axes],
                "hovertemplate": f"trial {shown[k].number}<br>%{{customdata[0]}}: %{{customdata[1]}}<extra></extra>",
            }
        )
    return traces


def _colour_bar(low: float, high: float, maximize: bool) -> dict[str, Any]:
    """A trace with no points that shows the colour scale of the lines' values."""
    return {
        "type": "scatter",
        "x": [None, None],
        "y": [None, None],
        "mode": "markers",
        "showlegend": False,
        "hoverinfo": "skip",
        "marker": {
            "color": [low, high],
            "cmin": low,
            "cmax": high,
            "colorscale": TRIAL_SCALE,
            "reversescale": not maximize,
            "showscale": True,
            "colorbar": {"title": {"text": METRIC}},
        },
    }


def _axis_ends(axes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each axis's top and bottom value, written at its ends."""
    return [
        {
            "x": i,
            "y": y,
            "text": text,
            "showarrow": False,
            "xref": "x",
            "yref": "y",
            "yanchor": anchor,
            "font": {"size": 10, "color": "#555"},
        }
        for i, a in enumerate(axes)
        for y, text, anchor in ((1.0, a["top"], "bottom"), (0.0, a["bottom"], "top"))
    ]


def _value_axis(trials: Sequence[FrozenTrial]) -> dict[str, Any]:
    values = [t.values[0] for t in trials]
    return _numeric_axis(METRIC, values, values, lambda v: f"{v:.4f}")


def _param_axis(trials: Sequence[FrozenTrial], name: str) -> dict[str, Any]:
    """One parallel-coordinates axis: each trial's position in 0-1, its text, and the end labels."""
    raw = [t.params[name] for t in trials]
    dist = trials[0].distributions[name] if trials else None
    if isinstance(dist, CategoricalDistribution):
        order = [str(c) for c in dist.choices]
        order += sorted({str(v) for v in raw} - set(order))  # a choice the space had earlier
        index = {c: i for i, c in enumerate(order)}
        span = max(len(order) - 1, 1)
        return {
            "label": name,
            "scaled": [index[str(v)] / span for v in raw],
            "text": [str(v) for v in raw],
            "top": order[-1],
            "bottom": order[0],
        }
    log = isinstance(dist, (FloatDistribution, IntDistribution)) and dist.log
    position = [math.log10(float(v)) if log else float(v) for v in raw]
    return _numeric_axis(name, [float(v) for v in raw], position, lambda v: f"{v:.3g}")


def _numeric_axis(label: str, raw: list[float], position: list[float], fmt: Any) -> dict[str, Any]:
    low, high = (min(position), max(position)) if position else (0.0, 1.0)
    scaled = [(p - low) / (high - low) if high > low else 0.5 for p in position]
    return {
        "label": label,
        "scaled": scaled,
        "text": [fmt(v) for v in raw],
        "top": fmt(max(raw)) if raw else "",
        "bottom": fmt(min(raw)) if raw else "",
    }


def _blue(share: float) -> str:
    """A colour of :data:`TRIAL_BLUES` for a share in 0-1 (0 light, 1 dark)."""
    return TRIAL_BLUES[min(int(share * (len(TRIAL_BLUES) - 1) + 0.5), len(TRIAL_BLUES) - 1)]
