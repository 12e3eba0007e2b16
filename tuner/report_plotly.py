"""Figures as the plain data plotly.js draws, and the report's look.

A figure is the dict plotly.js draws (``{"data": [traces], "layout": {...}}``), written into the
page by :func:`to_div`. Building the same figures as plotly's Python graph objects validated
every property of every trace: at 5,000 trials that was most of the report's time
(docs/benchmarks.md), while the browser draws exactly the same. plotly.js (inlined once by the report)
is still the plotting library; only the Python objects are skipped. Numbers travel as typed
arrays (:func:`numbers`), and no text can end the ``<script>`` a figure is drawn by.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
import datetime
import json
import math
from typing import Any

from optuna.trial import TrialState

#: What plotly.js draws: ``{"data": [...], "layout": {...}}``.
Figure = dict[str, Any]

HEIGHT = "440px"
CONFIG = {"displaylogo": False, "responsive": True}
COLORS = {TrialState.COMPLETE: "#1f77b4", TrialState.PRUNED: "#d62728"}
#: plotly's "Blues", light to dark.
_BLUES = ["#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08519c", "#08306b"]
#: The same as a colour scale (plotly.js' own "Blues" runs the other way, dark to light): for
#: shares (the confusion matrix), where white is 0.
BLUE_SCALE = [[i / (len(_BLUES) - 1), c] for i, c in enumerate(_BLUES)]
#: Trials as markers and lines on white: the lightest is still seen (else the worst trial vanishes).
TRIAL_BLUES = _BLUES[3:]
TRIAL_SCALE = [[i / (len(TRIAL_BLUES) - 1), c] for i, c in enumerate(TRIAL_BLUES)]
AXIS = {"gridcolor": "#e5e5e5", "zerolinecolor": "#cccccc", "linecolor": "#999999", "automargin": True}


def to_div(fig: Figure, div_id: str) -> str:
    """A ``<div>`` and the script that draws ``fig`` into it (plotly.js must be loaded before)."""
    data = _json(fig["data"])
    layout = _json(fig["layout"])
    return (
        f'<div id="{div_id}" class="plotly-graph-div" style="height:{HEIGHT}; width:100%;"></div>'
        f'<script type="text/javascript">Plotly.newPlot("{div_id}", {data}, {layout}, {_json(CONFIG)});'
        "</script>"
    )


#: Characters that mean something to the HTML parser inside a ``<script>`` (``</script``, ``<!--``
#: with ``<script`` "double-escapes" the rest of the page), written as JSON escapes instead.
_SCRIPT_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def _json(value: Any) -> str:
    # Outside strings JSON has none of "<>&"; inside them the escapes read back as the same text.
    return json.dumps(value, separators=(",", ":"), default=_jsonable, allow_nan=False).translate(_SCRIPT_SAFE)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime.datetime):  # plotly.js reads local-time strings: write UTC
        if value.tzinfo is not None:
            value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return value.isoformat(sep=" ")
    raise TypeError(f"not JSON: {type(value).__name__}")


def numbers(values: Iterable[float | None], dtype: str = "f8") -> dict[str, str]:
    """A numeric array as plotly.js' typed-array form (base64 of the raw bytes), as plotly writes
    numpy arrays: thousands of numbers cost no decimal formatting. Missing values are gaps (NaN)."""
    import numpy as np

    array = np.array(values if isinstance(values, list) else list(values), dtype=float)  # None -> NaN
    return {"dtype": dtype, "bdata": base64.b64encode(array.astype(_DTYPES[dtype]).tobytes()).decode("ascii")}


_DTYPES = {"f8": "<f8", "f4": "<f4"}


def new_figure(data: list[dict[str, Any]], title: str, x_title: str = "", y_title: str = "", **layout: Any) -> Figure:
    """The report's look: white, light grid, the title on top; ``layout`` overrides."""
    base: dict[str, Any] = {
        "title": {"text": title},
        "plot_bgcolor": "white",
        "paper_bgcolor": "white",
        "margin": {"l": 60, "r": 20, "t": 50, "b": 50},
        "font": {"family": "system-ui, sans-serif"},
        "xaxis": {**AXIS, "title": {"text": x_title}},
        "yaxis": {**AXIS, "title": {"text": y_title}},
    }
    for key, value in layout.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return {"data": data, "layout": base}


def finite_or_none(value: float) -> float | None:
    """A value plotly.js can place, or a gap."""
    return value if math.isfinite(value) else None


def counting(values: Iterable[float]) -> dict[str, Any]:
    """Axis (or colour bar) settings for counts (trial numbers, epochs): ticks on whole numbers
    only; plotly's automatic step is fractional (0.5) for a span below about ten."""
    values = list(values)
    span = max(values) - min(values) if values else 0
    return {"tickformat": "d", **({"tick0": 0, "dtick": 1} if span <= 10 else {})}


def curve_opacity(n: int) -> float:
    """Learning curves: each one readable for a few trials, a density for thousands."""
    return 0.9 if n <= 10 else 0.6 if n <= 100 else 0.35 if n <= 1000 else 0.2


def marker_size(n: int) -> int:
    """Marker size: visible for a few trials, not a blot for thousands."""
    return 8 if n < 200 else 5 if n < 1000 else 4


__all__ = [
    "AXIS",
    "BLUE_SCALE",
    "COLORS",
    "TRIAL_BLUES",
    "TRIAL_SCALE",
    "Figure",
    "counting",
    "curve_opacity",
    "finite_or_none",
    "marker_size",
    "new_figure",
    "numbers",
    "to_div",
]
