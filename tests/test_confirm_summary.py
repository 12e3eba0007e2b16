"""What ``tuner confirm``'s runs add up to, pure (``contract.confirm``): the per-configuration summary
(n, mean, sample sd, min, per-class means), the ``--pick confirmed`` rule (mean - SE) and the
top K it queues. The queueing itself: tests/test_confirm.py."""

from __future__ import annotations

import math
import statistics

import optuna
from optuna.trial import TrialState, create_trial
import pytest

from contract import trial_attrs
from contract.confirm import Confirmed, best, summarize, top_trials
from contract.pareto import Pick, PickError


def _trial(
    number: int,
    miou: float | None,
    state: TrialState = TrialState.COMPLETE,
    confirms: int | None = None,
    seed: int = 0,
    per_class: dict | None = None,
) -> optuna.trial.FrozenTrial:
    attrs: dict = {}
    if confirms is not None:
        attrs = {trial_attrs.CONFIRMS: confirms, trial_attrs.CONFIRM_SEED: seed}
    if miou is not None:
        attrs[trial_attrs.MIOU] = miou
        attrs[trial_attrs.PER_CLASS_IOU] = per_class or {"1": miou, "2": None}
    trial = create_trial(state=state, value=miou if state == TrialState.COMPLETE else None, user_attrs=attrs)
    trial.number = number
    return trial


def test_summary_is_n_mean_sample_sd_min_and_per_class_means_of_the_confirmation_runs_only():
    trials = [
        _trial(0, 0.80),  # the lucky search run: left out of its own statistics
        _trial(1, 0.70),
        _trial(2, 0.60, confirms=0, seed=1, per_class={"1": 0.5, "2": None}),
        _trial(3, 0.62, confirms=0, seed=2, per_class={"1": 0.7, "2": 0.2}),
        _trial(4, 0.64, confirms=0, seed=3),
        _trial(5, None, TrialState.RUNNING, confirms=1, seed=1),
        _trial(6, 0.69, confirms=1, seed=2),
        _trial(7, None, TrialState.FAIL, confirms=1, seed=3),
        _trial(8, 0.68, confirms=1, seed=3),  # the failed seed's retry completed
        _trial(9, None, TrialState.FAIL, confirms=1, seed=4),  # retries used up
    ]
    first, second = summarize(trials)
    assert (first.number, first.n, first.seeds, first.search_miou) == (0, 3, (1, 2, 3), 0.80)
    assert first.mean == pytest.approx(0.62)
    assert first.sd == pytest.approx(0.02)  # sample sd (n - 1) of 0.60, 0.62, 0.64
    assert first.minimum == pytest.approx(0.60)
    assert first.stderr == pytest.approx(0.02 / math.sqrt(3))
    assert first.score == pytest.approx(0.62 - 0.02 / math.sqrt(3))
    assert first.per_class_iou == {"1": pytest.approx((0.5 + 0.7 + 0.64) / 3), "2": pytest.approx(0.2)}
    assert (second.n, second.seeds, second.pending, second.failed) == (2, (2, 3), 1, 1)
    assert second.mean == pytest.approx(0.685) and second.sd == pytest.approx(statistics.stdev([0.69, 0.68]))
    assert best([first, second]) is second  # 0.685 - 0.005 beats 0.62 - 0.0115


def test_the_confirmed_pick_trades_mean_against_its_standard_error():
    steady = Confirmed(number=1, search_miou=0.7, seeds=(1, 2, 3, 4), mious=(0.60, 0.60, 0.61, 0.61), per_class_iou={})
    wild = Confirmed(number=2, search_miou=0.8, seeds=(1, 2), mious=(0.50, 0.74), per_class_iou={})
    assert wild.mean > steady.mean
    assert best([wild, steady]) is steady  # 0.62 - 0.12 < 0.605 - 0.0029
    single = Confirmed(number=3, search_miou=0.9, seeds=(1,), mious=(0.9,), per_class_iou={})
    assert single.sd is None and single.score is None
    assert best([single]) is None  # one run has no spread: not rankable


def test_top_k_counts_only_complete_search_trials():
    trials = [_trial(0, 0.5), _trial(1, 0.9, confirms=0, seed=1), _trial(2, 0.7), _trial(3, 0.8, TrialState.PRUNED)]
    top = top_trials(trials, [optuna.study.StudyDirection.MAXIMIZE], 3)
    assert [t.number for t in top] == [2, 0]


def test_pick_confirmed_parses():
    assert Pick.parse("confirmed").confirmed
    assert not Pick.parse("best-miou").confirmed
    with pytest.raises(PickError):
        Pick.parse("confirmed 2")
