"""The bulk readers of ``storage.summaries`` return what Optuna's own readers return.

``tuner status``, ``list`` and ``report`` read Optuna's tables directly for speed; these tests
hold them to Optuna's answers on studies with every state, every distribution kind, non-finite
values, several objectives and a second study in the same database.
"""

from __future__ import annotations

import datetime
import math

import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState
import pytest

import storage
from storage.snapshot import SnapshotStorage
from storage.summaries import (
    best_trial_id,
    count_states,
    find_study,
    open_reader,
    study_names,
    study_overviews,
)
from storage.trial_reader import load_trials


def _objective_trials(study: optuna.Study) -> None:
    """Every state, int/float/log/categorical params, inf and NaN epoch values, user attrs."""
    for i in range(6):
        trial = study.ask()
        trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        trial.suggest_int("filters", 8, 64, step=8)
        trial.suggest_categorical("loss", ["focal", "dice", None])
        trial.set_user_attr("worker", {"host": f"h{i % 2}", "pid": i})
        trial.set_user_attr("phase", "training")
        for step in range(1, i + 1):
            trial.report({3: math.inf, 4: math.nan}.get(step, 0.1 * step + 0.01 * i), step)
        if i in (0, 3):
            study.tell(trial, 0.5 + 0.01 * i)
        elif i == 1:
            study.tell(trial, math.inf)  # a non-finite value: never "best" in our readers
        elif i == 2:
            study.tell(trial, state=TrialState.PRUNED)
        elif i == 4:
            study.tell(trial, state=TrialState.FAIL)
        # i == 5 stays RUNNING
    study.enqueue_trial({"lr": 1e-3})


def _same(ours: optuna.trial.FrozenTrial, theirs: optuna.trial.FrozenTrial, *, intermediate: bool = True) -> None:
    assert (ours.number, ours.state, ours._trial_id) == (theirs.number, theirs.state, theirs._trial_id)
    assert ours.values == theirs.values
    assert (ours.datetime_start, ours.datetime_complete) == (theirs.datetime_start, theirs.datetime_complete)
    assert ours.params == theirs.params and ours.distributions == theirs.distributions
    if intermediate:
        assert set(ours.intermediate_values) == set(theirs.intermediate_values)
        for step, value in theirs.intermediate_values.items():
            mine = ours.intermediate_values[step]
            assert (math.isnan(mine) and math.isnan(value)) or mine == value, step


@pytest.fixture(params=["postgresql", "sqlite"])
def two_studies(request, tmp_path):
    """The same two studies on the machine's PostgreSQL and in an SQLite file (the default
    storage), where raw queries return timestamps as text."""
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'studies.db'}"
    storage.init_schema(url)
    rdb = storage.open_storage(url, heartbeat_interval=None, role="coordinator")
    study = optuna.create_study(
        study_name="a", storage=rdb, direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0)
    )
    study.set_user_attr("created", {"at": "2026-11-26T10:00:00+00:00"})
    _objective_trials(study)
    other = optuna.create_study(study_name="b", storage=rdb, directions=["minimize", "maximize"])
    other.add_trial(optuna.trial.create_trial(values=[2.0, 3.0], params={}, distributions={}))
    yield rdb, study, other
    rdb.engine.dispose()


def test_load_trials_equals_optunas_get_trials(two_studies):
    rdb, study, _ = two_studies
    engine = open_reader(rdb.url)
    try:
        head = find_study(engine, "a")
        assert head is not None and head.directions == (StudyDirection.MAXIMIZE,)
        assert head.user_attrs["created"] == {"at": "2026-11-26T10:00:00+00:00"}
        theirs = study.get_trials(deepcopy=False)
        ours = load_trials(engine, head.study_id)
        assert len(ours) == len(theirs) == 7
        for mine, other in zip(ours, theirs, strict=False):
            _same(mine, other)
            assert mine.user_attrs == other.user_attrs
        # Filters: states, ids, chosen attributes, no epoch values.
        running = load_trials(engine, head.study_id, states=(TrialState.RUNNING,), user_attr_keys=("phase",))
        assert [t.number for t in running] == [5] and running[0].user_attrs == {"phase": "training"}
        assert len(running[0].intermediate_values) == 5
        some = load_trials(
            engine, head.study_id, trial_ids=[theirs[2]._trial_id], intermediate=False, user_attr_keys=()
        )
        assert [t.number for t in some] == [2] and some[0].intermediate_values == {} and some[0].user_attrs == {}
        assert load_trials(engine, head.study_id, states=()) == []
        # The best finite value wins; the trial with value inf does not.
        assert best_trial_id(engine, head.study_id, StudyDirection.MAXIMIZE) == theirs[3]._trial_id
        assert best_trial_id(engine, head.study_id, StudyDirection.MINIMIZE) == theirs[0]._trial_id
        counts = count_states(engine, head.study_id)
        assert counts == {
            TrialState.COMPLETE: 3,
            TrialState.PRUNED: 1,
            TrialState.FAIL: 1,
            TrialState.RUNNING: 1,
            TrialState.WAITING: 1,
        }
        assert study_names(engine) == ["a", "b"] and find_study(engine, "nosuch") is None
    finally:
        engine.dispose()


def test_study_overviews_count_and_pick_best_per_direction(two_studies):
    rdb, _, _ = two_studies
    engine = open_reader(rdb.url)
    try:
        rows = {o.name: o for o in study_overviews(engine, user_attr_keys=("created",))}
    finally:
        engine.dispose()
    a, b = rows["a"], rows["b"]
    assert a.best_value == pytest.approx(0.53)  # trial 3; the inf value is not a best value
    assert a.counts[TrialState.COMPLETE] == 3 and a.counts[TrialState.WAITING] == 1
    assert a.user_attrs == {"created": {"at": "2026-11-26T10:00:00+00:00"}} and b.user_attrs == {}
    assert b.directions == (StudyDirection.MINIMIZE, StudyDirection.MAXIMIZE)
    assert b.best_value == 2.0  # several objectives: the best of the first (minimised here)
    assert isinstance(a.first_start, datetime.datetime)


def test_snapshot_serves_optuna_readers_and_refuses_writes(two_studies):
    rdb, study, _ = two_studies
    trials = study.get_trials(deepcopy=False)
    snap = SnapshotStorage("a", [StudyDirection.MAXIMIZE], trials).study()
    assert snap.best_trial.number == study.best_trial.number
    assert [t.number for t in snap.get_trials(states=(TrialState.PRUNED,))] == [2]
    assert (
        optuna.importance.get_param_importances(snap, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
        is not None
    )
    with pytest.raises(NotImplementedError):
        snap.set_user_attr("x", 1)
    with pytest.raises(NotImplementedError):
        snap.ask()
