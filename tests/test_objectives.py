"""Accuracy against cost: two-objective studies (mIoU and params or latency), the Pareto front and
the ``--pick`` rules of ``tuner status``, ``export`` and ``report``."""

from __future__ import annotations

import io
import json

from helpers import lose_first_reply, one_cli_error, run_cli, tiny_space
import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState
import pytest
from rich.console import Console
from typer.testing import CliRunner
import yaml

from contract import trial_attrs as attrs
from contract.pareto import Pick
from contract.space import SearchSpace
from contract.study_spec import SpecError, StudySpec
import storage
from tuner import report as tuner_report
from tuner.cli import app
from tuner.export import export_best
from tuner.status import print_status, read_status, summarize
from tuner.study import CreateOptions, StudyError, create_study, default_space_path

FINGERPRINT = "cd" * 32
#: (mIoU, params) of the filled study's trials, by number. Front: 2 (cheapest), 1, 0; 3 and 4
#: are dominated (3 by 1; 4 by 0: same mIoU, more parameters).
VALUES = [(0.70, 1000.0), (0.695, 200.0), (0.60, 100.0), (0.65, 500.0), (0.70, 2000.0)]


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


# -- the spec -------------------------------------------------------------------------------------


def _spec(**kwargs) -> StudySpec:
    return StudySpec(space=SearchSpace.load(default_space_path()), data_fingerprint=FINGERPRINT, n_trials=5, **kwargs)


def test_spec_objectives_default_round_trip_and_old_specs():
    assert _spec().objectives == ("miou",) and not _spec().multi_objective
    spec = _spec(objectives=("miou", "latency"), pruner="none", sampler="nsga2")
    assert spec.directions == ["maximize", "minimize"] and spec.cost == "latency"
    again = StudySpec.from_attr(json.loads(json.dumps(spec.to_attr())))
    assert again == spec and again.objectives == ("miou", "latency")
    assert isinstance(spec.make_sampler(), optuna.samplers.NSGAIISampler)
    old = _spec().to_attr()
    assert "objectives" not in old  # as before objectives existed: older workers still join
    assert StudySpec.from_attr(old).objectives == ("miou",)
    assert json.loads(json.dumps(spec.to_attr()))["objectives"] == ["miou", "latency"]


def test_nsga2_and_tpe_run_a_two_objective_study_in_process(pg_schema_url):
    for sampler in ("nsga2", "tpe"):
        create_study(
            sampler,
            CreateOptions(
                storage_url=pg_schema_url,
                data=None,
                fingerprint=FINGERPRINT,
                space_path=None,
                trials=6,
                objectives="miou,params",
                sampler=sampler,
                seed_config=False,
            ),
        )
        rdb = storage.open_storage(pg_schema_url, heartbeat_interval=None)
        spec = StudySpec.of(optuna.load_study(study_name=sampler, storage=rdb))
        study = optuna.load_study(
            study_name=sampler, storage=rdb, sampler=spec.make_sampler("w1"), pruner=spec.make_pruner()
        )
        for i in range(6):
            trial = study.ask()
            config = spec.space.sample(trial)
            study.tell(trial, [0.1 * i, float(config.base_filters)])
        assert len(study.best_trials) >= 1 and all(len(t.values) == 2 for t in study.trials)
        rdb.engine.dispose()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"objectives": ("miou", "params")}, "pruner 'hyperband' cannot prune a study with several objectives"),
        ({"objectives": ("params",), "pruner": "none"}, "must start with miou"),
        ({"objectives": ("miou", "params", "latency"), "pruner": "none"}, "at most one cost"),
        ({"objectives": ("miou", "miou"), "pruner": "none"}, "repeats an objective"),
        ({"objectives": ("miou", "flops"), "pruner": "none"}, "unknown objective 'flops'"),
        ({"objectives": ["miou", 3], "pruner": "none"}, "unknown objective 3"),
        ({"objectives": "miou"}, "objectives must be tuple"),
        ({"sampler": "nsga2"}, "sampler nsga2 is for several objectives"),
    ],
)
def test_spec_refuses_bad_objectives(kwargs, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        _spec(**kwargs)


# -- tuner create, tuner demo ---------------------------------------------------------------------


def _load(url: str, name: str = "s") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage.open_storage(url, heartbeat_interval=None))


def test_create_two_objectives_stores_directions_and_no_pruner(pg_schema_url):
    result = invoke(
        "create",
        "s",
        "--fingerprint",
        FINGERPRINT,
        "--objectives",
        "miou,params",
        "--trials",
        "4",
        "--storage",
        pg_schema_url,
    )
    assert result.exit_code == 0, result.stderr
    assert "objectives miou (max), params (min)" in result.stdout and "pruner none" in result.stdout
    study = _load(pg_schema_url)
    assert study.directions == [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    spec = StudySpec.of(study)
    assert spec.objectives == ("miou", "params") and spec.pruner == "none" and spec.sampler == "tpe"
    assert isinstance(spec.make_pruner(), optuna.pruners.NopPruner)

    result = invoke(
        "create",
        "l",
        "--fingerprint",
        FINGERPRINT,
        "--objectives",
        "miou,latency",
        "--sampler",
        "nsga2",
        "--pruner",
        "none",
        "--storage",
        pg_schema_url,
    )
    assert result.exit_code == 0, result.stderr
    assert StudySpec.of(_load(pg_schema_url, "l")).objectives == ("miou", "latency")
    # --exist-ok with other objectives is not "the same study".
    again = invoke("create", "l", "--fingerprint", FINGERPRINT, "--exist-ok", "--storage", pg_schema_url)
    one_cli_error(again, "exists with objectives miou,latency, not miou")
    # The single-objective default is unchanged.
    assert invoke("create", "one", "--fingerprint", FINGERPRINT, "--storage", pg_schema_url).exit_code == 0
    single = _load(pg_schema_url, "one")
    assert single.directions == [StudyDirection.MAXIMIZE] and StudySpec.of(single).pruner == "hyperband"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--objectives", "miou,params", "--pruner", "hyperband"], "cannot prune a study with several objectives"),
        (["--objectives", "miou,latency", "--pruner", "median"], "cannot prune a study with several objectives"),
        (["--objectives", "params,miou"], "must start with miou"),
        (["--objectives", "miou,params,latency"], "at most one cost"),
        (["--objectives", "miou,miou"], "repeats an objective"),
        (["--objectives", "miou,flops"], "unknown objective 'flops'"),
        (["--sampler", "nsga2"], "sampler nsga2 is for several objectives"),
    ],
)
def test_create_refuses_bad_combinations_in_one_line(pg_url, args, message):
    result = invoke("create", "s", "--fingerprint", FINGERPRINT, *args, "--storage", pg_url)
    one_cli_error(result, message)
    assert storage.current_revision(pg_url) is None  # validated before touching the database


@pytest.mark.parametrize(
    "args, message",
    [
        (["--objectives", "miou,flops"], "unknown objective 'flops'"),
        (["--pick", "smallest-within 0.01"], "needs a study with two objectives"),
        (["--objectives", "miou,params", "--pick", "largest"], "is not a pick rule"),
    ],
)
def test_demo_refuses_bad_objectives_and_picks_before_writing(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUNER_HOME", str(tmp_path / "home"))
    one_cli_error(invoke("demo", *args, "--storage", f"sqlite:///{tmp_path}/t.db"), message)
    assert list(tmp_path.iterdir()) == []


# -- status, export, report: the pick -------------------------------------------------------------


def _filled(url: str, values=VALUES, objectives: str = "miou,params") -> optuna.Study:
    """A study with COMPLETE trials of known values (and the config a worker records)."""
    create_study(
        "s",
        CreateOptions(
            storage_url=url,
            data=None,
            fingerprint=FINGERPRINT,
            space_path=None,
            trials=10,
            objectives=objectives,
            seed_config=False,
        ),
    )
    rdb = storage.open_storage(url, heartbeat_interval=None)
    study = optuna.load_study(study_name="s", storage=rdb, sampler=optuna.samplers.RandomSampler(seed=0))
    spec = StudySpec.of(study)
    for i, value in enumerate(values):
        trial = study.ask()
        attrs.record_start(trial, spec.space.sample(trial), {"host": "h", "pid": 1, "gpu": None}, {"device": "cpu"})
        trial.set_user_attr(attrs.PER_CLASS_IOU, {"1": 0.5 + i / 100, "2": 0.4, "3": 0.3, "4": None})
        if len(value) > 1:
            trial.set_user_attr(attrs.N_PARAMS, int(value[1]))
        study.tell(trial, list(value))
    running = study.ask()  # stays RUNNING; not on any front
    assert running.number == len(values)
    return study


@pytest.fixture(scope="module")
def filled(pg_schema_module_url) -> tuple[str, optuna.Study]:
    """``_filled``'s study, built once for the tests that only read it: (its URL, the study)."""
    return pg_schema_module_url, _filled(pg_schema_module_url)


def _status(url: str, pick: str = "best-miou", width: int = 160) -> str:
    out = io.StringIO()
    print_status("s", url, console=Console(file=out, width=width, color_system=None), pick=pick)
    return out.getvalue()


def test_status_shows_the_front_and_the_picked_trial(filled):
    url, _ = filled
    text = _status(url)
    assert "front:    3 of 5 complete trials on the Pareto front" in text
    assert "pick:     best-miou -> trial 0: miou 0.7000, params 1,000" in text
    assert "pick:     smallest-within 0.01 -> trial 1: miou 0.6950, params 200;" in _status(url, "smallest-within 0.01")
    assert "-> trial 2:" in _status(url, "smallest-within=0.2")

    from storage.summaries import find_study, open_reader

    engine = open_reader(url)
    try:
        data = read_status(engine, find_study(engine, "s"), Pick.parse("smallest-within 0.01"))
    finally:
        engine.dispose()
    summary = summarize(data, StudySpec.of(_load(url)))
    assert [t.number for t in data.front] == [2, 1, 0]
    assert (summary.best.number, summary.best.cost, summary.front.size) == (1, 200.0, 3)
    assert summary.best.per_class_iou["1"] == pytest.approx(0.51)

    result = invoke("status", "s", "--pick", "smallest-within 0.01", "--storage", url)
    assert result.exit_code == 0 and "-> trial 1:" in result.stdout, result.stderr
    cheapest = invoke("status", "s", "--pick", "cheapest", "--storage", url)
    one_cli_error(cheapest, "--pick 'cheapest' is not a pick rule")


def test_list_shows_the_best_miou_of_a_two_objective_study(filled):
    url, _ = filled
    result = invoke("list", "--storage", url)
    assert result.exit_code == 0, result.stderr
    (row,) = [line for line in result.stdout.splitlines() if " s " in line]
    assert "0.7000" in row and "5/10" in row, result.stdout


def test_export_writes_the_picked_trials_config(filled, tmp_path):
    url, study = filled
    by_number = {t.number: t for t in study.get_trials()}
    for pick, number in (("best-miou", 0), ("smallest-within 0.01", 1), ("smallest-within=0.2", 2)):
        out = tmp_path / f"{number}.yaml"
        result = invoke("export", "s", "--pick", pick, "-o", out, "--storage", url)
        assert result.exit_code == 0, result.stderr
        assert f"wrote the config of trial {number} " in result.stderr
        text = out.read_text()
        assert yaml.safe_load(text) == by_number[number].user_attrs[attrs.CONFIG]
        assert f"# Pareto pick ({Pick.parse(pick)}) of study 's'" in text and f"# trial: {number}\n" in text
        assert f"# params: {VALUES[number][1]!r}" in text
    one_cli_error(invoke("export", "s", "--pick", "smallest-within -1", "--storage", url), "is not a pick rule")


def test_one_objective_takes_only_the_default_pick(pg_schema_url, tmp_path):
    create_study(
        "s",
        CreateOptions(
            storage_url=pg_schema_url, data=None, fingerprint=FINGERPRINT, space_path=None, trials=3, seed_config=False
        ),
    )
    study = _load(pg_schema_url)
    trial = study.ask()
    attrs.record_start(trial, StudySpec.of(study).space.sample(trial), {}, {})
    study.tell(trial, 0.5)
    for command in (["status", "s"], ["export", "s"], ["report", "s", "-o", tmp_path / "r.html"]):
        result = invoke(*command, "--pick", "smallest-within 0.01", "--storage", pg_schema_url)
        one_cli_error(result, "--pick smallest-within 0.01 needs a study with two objectives")
        assert not (tmp_path / "r.html").exists()  # nothing half-written
        assert invoke(*command, "--pick", "best-miou", "--storage", pg_schema_url).exit_code == 0
    assert "best:     0.5000 (trial 0)" in _status(pg_schema_url)
    with pytest.raises(StudyError, match="needs a study with two objectives"):
        export_best("s", storage=pg_schema_url, pick="smallest-within 0.01")


def test_report_draws_the_front_and_uses_the_pick(filled, tmp_path):
    from report_page import SECTION_IDS, parse

    url, study = filled
    out = tmp_path / "mo.html"
    tuner_report.write_report("s", storage_url=url, output=out, pick="smallest-within 0.01")
    text = out.read_text()
    assert [i for i in parse(text).ids if i in SECTION_IDS] == SECTION_IDS  # Pareto front included
    pareto = text[text.index('<section id="pareto">') : text.index('<section id="history">')]
    assert "Pareto front: validation mIoU against parameters (3 of 5 complete trials)" in pareto
    assert "picked (smallest-within 0.01)" in pareto and '"symbol":"star"' in pareto.replace(" ", "")
    for fact in (
        "objectives</th><td>miou (maximize), params (minimize)",
        "Pareto front</th><td>3 of 5 complete trials; best = pick smallest-within 0.01",
        "best</th><td>trial 1: validation mIoU 0.6950, params 200 (pick smallest-within 0.01)",
    ):
        assert fact in text, fact
    best_section = text[text.index('<section id="best">') :]
    assert "<p>trial 1: validation mIoU 0.6950" in best_section
    config = {t.number: t for t in study.get_trials()}[1].user_attrs[attrs.CONFIG]
    assert "# trial: 1\n" in best_section and "# params: 200.0" in best_section
    assert str(config["learning_rate"]) in best_section


def test_a_two_value_tell_whose_reply_was_lost_is_not_dropped(pg_schema_url, tmp_path):
    """A retried tell finds the trial COMPLETE with both values: it had worked."""
    from worker.study_link import StudyLink

    create_study(
        "s",
        CreateOptions(
            storage_url=pg_schema_url,
            data=None,
            fingerprint=FINGERPRINT,
            space_path=None,
            trials=2,
            objectives="miou,params",
            seed_config=False,
        ),
    )
    rdb = storage.open_storage(pg_schema_url, heartbeat_interval=None)
    study = optuna.load_study(study_name="s", storage=rdb)
    link = StudyLink(study, rdb, pg_schema_url, StudySpec.of(study).grace_period, print)
    real = study.tell
    try:
        trial = study.ask()
        lost = lose_first_reply(study)
        link.tell(trial, values=[0.5, 1234.0])
        stored = [(t.state, t.values) for t in _load(pg_schema_url).get_trials()]
        assert lost and stored == [(TrialState.COMPLETE, [0.5, 1234.0])]
        other = study.ask()
        real(other, [0.4, 10.0])
        with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):  # finished with other values
            link.tell(other, values=[0.5, 1234.0])
    finally:
        link.close()


# -- a real worker ----------------------------------------------------------------------------------

#: The tiny space, searching the multi-scale width and TTA (what the costs depend on).
OBJECTIVES_PARAMS = {
    "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
    "multiscale_filters": {"type": "categorical", "choices": [4, 8]},
    "tta": {"type": "bool"},
}


@pytest.mark.slow
def test_worker_tells_miou_and_latency_and_records_the_costs(pg_url, tmp_path, synth_npz):
    npz = synth_npz(48, seed=3)
    space = tiny_space(tmp_path / "space.yaml", params=OBJECTIVES_PARAMS, epochs=2)
    env = {"TUNER_STORAGE": pg_url}
    created = run_cli(
        "tuner",
        "create",
        "s",
        "--data",
        str(npz),
        "--space",
        str(space),
        "--trials",
        "3",
        "--objectives",
        "miou,latency",
        "--no-seed-config",
        env=env,
        timeout=120,
    )
    assert created.returncode == 0, created.stderr
    artifacts = tmp_path / "artifacts"
    worker = run_cli(
        "worker",
        "run",
        "--study",
        "s",
        "--data",
        str(npz),
        "--quiet",
        "--artifact-dir",
        str(artifacts),
        env=env,
        timeout=600,
    )
    assert worker.returncode == 0, worker.stdout + worker.stderr
    assert "NotImplementedError" not in worker.stdout + worker.stderr

    trials = _load(pg_url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    from contract.config import TrainConfig
    from worker.training.model import build_model

    for trial in trials:
        miou, latency = trial.values
        assert miou == pytest.approx(trial.user_attrs[attrs.MIOU])
        assert latency == trial.user_attrs[attrs.LATENCY_MS] and 0 < latency < 10_000
        config = TrainConfig.from_dict(trial.user_attrs[attrs.CONFIG])
        assert trial.user_attrs[attrs.N_PARAMS] == build_model(config).count_params()
        assert set(trial.intermediate_values) == {1, 2}  # learning curves without a pruner
    # Different multiscale widths, different parameter counts: the count is the model's.
    assert len({t.user_attrs[attrs.N_PARAMS] for t in trials}) == len({t.params["multiscale_filters"] for t in trials})

    # Every trial that joined the front when it finished uploaded its model; the final front's all did.
    from contract.pareto import front_trials

    on_front = front_trials(trials, _load(pg_url).directions)
    assert on_front and all(attrs.MODEL_ARTIFACT in t.user_attrs for t in on_front)

    out, model = tmp_path / "pick.yaml", tmp_path / "pick.keras"
    exported = run_cli(
        "tuner",
        "export",
        "s",
        "--pick",
        "smallest-within 0.01",
        "-o",
        str(out),
        "--model",
        str(model),
        "--artifact-dir",
        str(artifacts),
        env=env,
        timeout=120,
    )
    assert exported.returncode == 0, exported.stderr
    assert TrainConfig.load(out).epochs == 2 and "# latency: " in out.read_text()
    assert model.stat().st_size > 0


@pytest.mark.slow
def test_two_objective_report_renders_in_chromium_without_console_errors(filled, tmp_path):
    from report_page import render_in_chromium

    url, _ = filled
    out = tmp_path / "mo.html"
    tuner_report.write_report("s", storage_url=url, output=out, pick="smallest-within 0.01")
    dom, problems = render_in_chromium(out, tmp_path)
    assert problems == []
    pareto = dom[dom.index('<section id="pareto">') : dom.index('<section id="history">')]
    assert 'class="main-svg"' in pareto  # plotly drew the front
    assert "picked (smallest-within 0.01)" in pareto  # the legend entry of the starred pick
