"""tuner report's parallelism view: trials in flight over time and near-duplicate suggestions."""

from __future__ import annotations

import datetime
import re

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState
import pytest
from report_page import render_in_chromium

import storage
from tuner import report as tuner_report
from tuner import report_parallelism

T0 = datetime.datetime(2026, 12, 1, 8, 0, 0)
SPACE = {
    "learning_rate": FloatDistribution(1e-4, 1e-2, log=True),
    "model": CategoricalDistribution(["multipath", "unet"]),
}


def _trial(number, start, end, lr, model="unet", state=TrialState.COMPLETE):
    """A trial that ran from ``start`` to ``end`` minutes after T0 (``end`` None: still running)."""
    return FrozenTrial(
        number=number,
        trial_id=number,
        state=state,
        value=0.5 + 0.01 * number if end is not None else None,
        values=None,
        datetime_start=T0 + datetime.timedelta(minutes=start),
        datetime_complete=None if end is None else T0 + datetime.timedelta(minutes=end),
        params={"learning_rate": lr, "model": model},
        distributions=SPACE,
        user_attrs={},
        system_attrs={},
        intermediate_values={},
    )


def _trials():
    """Three workers: 0-3 overlap; 1 repeats 0 while it runs; 4 repeats 2 after it ended; 5 runs on."""
    return [
        _trial(0, 0, 30, 1e-3),
        _trial(1, 0, 20, 1.01e-3),  # near 0, which still ran: concurrent
        _trial(2, 10, 40, 5e-3, "multipath"),
        _trial(3, 20, 50, 2e-4),
        _trial(4, 40, 60, 5e-3, "multipath"),  # exact repeat of 2, which had finished at 40
        _trial(5, 50, None, 1e-4, state=TrialState.RUNNING),
    ]


def test_summary_counts_overlap_and_duplicates():
    now = T0 + datetime.timedelta(minutes=70)
    view = report_parallelism.summarize(_trials(), now)
    assert view is not None
    # in flight: 0-10: 2, 10-20: 3, 20-30: 3 (1 ends, 3 starts), 30-40: 2, 40-50: 2, 50-60: 2, 60-70: 1
    assert view.peak == 3
    assert view.mean == pytest.approx((2 * 10 + 3 * 20 + 2 * 30 + 1 * 10) / 70)
    assert view.duplicates.near.tolist() == [False, True, False, False, True, False]
    assert view.duplicates.exact.tolist() == [False, False, False, False, True, False]
    assert view.duplicates.concurrent.tolist() == [False, True, False, False, False, False]
    text = dict(report_parallelism.rows(view))
    assert text["trials in flight"].startswith("peak 3, mean 2.1")
    assert text["near-duplicates"].startswith("2 (33%)")
    assert text["while the twin ran"].startswith("1 (17%)")
    fig = report_parallelism.figure(view)
    assert [t["name"] for t in fig["data"]] == [
        "trials in flight",
        "near-duplicate",
        "near-duplicate while its twin ran",
    ]
    assert fig["data"][2]["text"] == ["trial 1"] and fig["data"][1]["text"] == ["trial 4"]


def test_summary_of_trials_never_started_is_none():
    waiting = FrozenTrial(
        number=0,
        trial_id=0,
        state=TrialState.WAITING,
        value=None,
        values=None,
        datetime_start=None,
        datetime_complete=None,
        params={"learning_rate": 1e-3},
        distributions={"learning_rate": SPACE["learning_rate"]},
        user_attrs={},
        system_attrs={},
        intermediate_values={},
    )
    assert report_parallelism.summarize([waiting], T0) is None


@pytest.mark.slow
def test_parallelism_view_renders_in_chromium(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage.init_schema(url)
    study = optuna.create_study(storage=url, study_name="par", direction="maximize")
    for trial in _trials():
        study.add_trial(trial)
    out = tmp_path / "report.html"
    tuner_report.write_report("par", storage_url=url, output=out)
    text = out.read_text()
    section = text[text.index('<section id="parallelism">') :]
    section = section[: section.index("</section>")]
    assert "peak 3" in section and "2 (33%)" in section and "plotly-graph-div" in section

    dom, problems = render_in_chromium(out, tmp_path)
    assert problems == []
    drawn = dom[dom.index('<section id="parallelism">') :]
    drawn = drawn[: drawn.index("</section>")]
    assert re.search(r'class="[^"]*plotly-graph-div js-plotly-plot', drawn)  # plotly drew it
    assert "trials in flight over wall-clock time" in drawn and "near-duplicate while its twin ran" in drawn
