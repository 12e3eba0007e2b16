"""The sampler a study's workers build: its options, and the expected number of workers it depends on."""

from __future__ import annotations

import json

import optuna
import pytest
from typer.testing import CliRunner

from contract.space import SearchSpace
from contract.study_spec import SpecError, StudySpec, tpe_options, worker_seed
import storage
from tuner.cli import app

SPACE = SearchSpace.from_dict({"params": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}})


def _spec(**kw) -> StudySpec:
    return StudySpec(space=SPACE, data_fingerprint="0" * 64, n_trials=10, **kw)


def test_workers_hint_round_trips_and_older_specs_mean_one_worker():
    spec = _spec(workers_hint=16)
    assert StudySpec.from_attr(json.loads(json.dumps(spec.to_attr()))).workers_hint == 16
    one = _spec().to_attr()
    assert "workers_hint" not in one  # workers from before the field still join such a study
    assert StudySpec.from_attr(one).workers_hint == 1
    with pytest.raises(SpecError, match="workers-hint"):
        _spec(workers_hint=0)


def test_worker_seeds_differ_per_worker_and_an_empty_key_keeps_the_study_seed():
    assert worker_seed(7, "") == 7
    seeds = {worker_seed(7, f"host:{pid}") for pid in range(50)}
    assert len(seeds) == 50 and all(0 <= s < 2**32 for s in seeds)
    assert worker_seed(7, "a") == worker_seed(7, "a") != worker_seed(8, "a")


def test_tuner_create_records_the_workers_hint(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    result = CliRunner().invoke(
        app, ["create", "s", "--fingerprint", "ab" * 32, "--trials", "20", "--workers-hint", "16", "--storage", url]
    )
    assert result.exit_code == 0, result.output
    assert "16 workers expected" in result.output and "fewer than 3 waves" in result.output
    rdb = storage.open_storage(url, heartbeat_interval=None)
    spec = StudySpec.of(optuna.load_study(study_name="s", storage=rdb))
    rdb.engine.dispose()
    assert spec.workers_hint == 16
    sampler = spec.make_sampler("host:1")
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._n_startup_trials == tpe_options(16)["n_startup_trials"] == 10

    bad = CliRunner().invoke(app, ["create", "t", "--fingerprint", "ab" * 32, "--workers-hint", "0", "--storage", url])
    assert bad.exit_code == 2 and "--workers-hint" in bad.output


@pytest.mark.parametrize(("workers", "startup"), [(1, 10), (4, 10), (16, 10), (64, 10)])
def test_tpe_defaults_for_any_number_of_workers(workers, startup):
    """The defaults chosen from bench/parallel_search.py (docs/benchmarks.md): constant liar on,
    10 random start-up trials whatever the number of workers (scaling them was not a win)."""
    sampler = _spec(workers_hint=workers).make_sampler("host:1")
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._constant_liar is True
    assert sampler._n_startup_trials == startup
    assert sampler._multivariate is None  # Optuna's own choice per number of objectives


def test_one_worker_gets_optunas_tpe_defaults():
    default = optuna.samplers.TPESampler()
    ours = _spec().make_sampler()
    for attr in ("_constant_liar", "_n_startup_trials", "_multivariate", "_n_ei_candidates"):
        assert getattr(ours, attr) == getattr(default, attr), attr
    two = StudySpec(
        space=SPACE,
        data_fingerprint="0" * 64,
        n_trials=10,
        pruner="none",
        objectives=("miou", "params"),
        workers_hint=32,
    ).make_sampler()
    assert two._n_startup_trials == 10 and two._constant_liar is True
