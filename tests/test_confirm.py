"""``tuner confirm``: what it queues, that it is idempotent, that confirmations stay out of the
search budget, and the per-configuration summary (n, mean, sd, min, mean - SE) the readers show.

Fast: trials are asked through the workers' own ``ask_within_budget`` and told by hand, with the
attributes written through :mod:`contract.trial_attrs` as a worker writes them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from helpers import one_cli_error, tiny_space
import optuna
from optuna.trial import TrialState
import pytest
from typer.testing import CliRunner

from contract import trial_attrs
from contract.confirm import seeds_for, summarize
from contract.pareto import Pick
from contract.study_spec import StudySpec
import storage
from tuner.cli import app
from tuner.confirm import confirm
from tuner.study import CreateOptions, create_study
from worker.budget import ask_within_budget

FINGERPRINT = "cd" * 32


class FakeResult:
    """The fields of worker.training.result.TrainResult that trial_attrs.record_result reads."""

    def __init__(self, miou: float) -> None:
        self.best_miou = miou
        self.per_class_iou = {1: miou, 2: miou / 2, 3: None, 4: 1.0}
        self.epochs_run, self.best_epoch, self.wall_time_s, self.n_train, self.n_val = 2, 1, 1.0, 48, 16


class Study:
    """A study created by ``tuner create``, run by a fake worker through the real budget."""

    def __init__(self, url: str, trials: int, name: str = "c", **options) -> None:
        self.url, self.name = url, name
        create_study(
            name,
            CreateOptions(
                storage_url=url,
                data=None,
                fingerprint=FINGERPRINT,
                space_path=None,
                trials=trials,
                seed_config=False,
                **options,
            ),
        )
        self.rdb = storage.open_storage(url)
        self.study = optuna.load_study(study_name=name, storage=self.rdb)
        self.spec = StudySpec.of(self.study)
        self.n_trials = trials

    def ask(self) -> optuna.Trial | None:
        return ask_within_budget(self.study, self.rdb, self.url, self.n_trials)[0]

    def run(self, trial: optuna.Trial, miou: float) -> None:
        """What a worker does with a trial: sample, apply a confirmation's seed, record, tell."""
        config = self.spec.space.sample(trial)
        mark = trial_attrs.confirmation_of(trial.user_attrs)
        if mark is not None:
            config = config.replace(seed=mark[1])
        trial_attrs.record_start(trial, config, {"host": "h", "pid": 1, "gpu": None}, {})
        trial_attrs.record_result(trial, FakeResult(miou))
        self.study.tell(trial, miou)

    def search(self, mious: list[float]) -> list[int]:
        numbers = []
        for miou in mious:
            trial = self.ask()
            assert trial is not None and trial_attrs.confirmation_of(trial.user_attrs) is None
            self.run(trial, miou)
            numbers.append(trial.number)
        return numbers

    def trials(self) -> list[optuna.trial.FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def marks(self) -> list[tuple[int, int]]:
        return sorted(m for t in self.trials() if (m := trial_attrs.confirmation_of(t.user_attrs)) is not None)

    def close(self) -> None:
        self.rdb.engine.dispose()


@pytest.fixture
def study(pg_schema_url):
    s = Study(pg_schema_url, trials=4)
    yield s
    s.close()


def test_confirm_queues_the_top_k_with_s_seeds_once_and_a_larger_s_adds_the_difference(study):
    numbers = study.search([0.5, 0.7, 0.6, 0.4])
    done = confirm("c", storage_url=study.url, top=2, seeds=2)
    assert [d.trial.number for d in done] == [numbers[1], numbers[2]]  # 0.7, 0.6
    assert study.marks() == [(numbers[1], 1), (numbers[1], 2), (numbers[2], 1), (numbers[2], 2)]
    for trial in study.trials():
        if trial_attrs.confirmation_of(trial.user_attrs) is not None:
            assert trial.state == TrialState.WAITING
            assert trial.system_attrs["fixed_params"] == study.trials()[trial.user_attrs[trial_attrs.CONFIRMS]].params

    again = confirm("c", storage_url=study.url, top=2, seeds=2)  # idempotent
    assert [d.added for d in again] == [(), ()] and len(study.marks()) == 4
    more = confirm("c", storage_url=study.url, top=2, seeds=3)  # the difference only
    assert [d.added for d in more] == [(3,), (3,)] and len(study.marks()) == 6
    fewer = confirm("c", storage_url=study.url, top=1, seeds=1)
    assert fewer[0].added == () and len(study.marks()) == 6


def test_configurations_confirmed_before_stay_chosen_while_the_search_goes_on(study):
    from tuner.confirm import describe

    first = study.search([0.5, 0.6])
    confirm("c", storage_url=study.url, top=1, seeds=1)  # trial first[1], mid-search
    study.run(study.ask(), 0.55)  # the queued confirmation goes first
    better = study.search([0.9])[0]
    again = confirm("c", storage_url=study.url, top=1, seeds=1)
    assert [(q.trial.number, q.added) for q in again] == [(first[1], ())]  # same arguments: nothing new
    assert [t.number for t in again[0].passed_over] == [better]
    assert f"trial {better} (0.9000) now rank(s) in the top 1" in describe("c", again)
    wider = confirm("c", storage_url=study.url, top=2, seeds=1)
    assert [(q.trial.number, q.added) for q in wider] == [(first[1], ()), (better, (1,))]


def test_confirmation_seeds_follow_the_search_runs_own_seed():
    assert seeds_for(0, 3) == [1, 2, 3]
    assert seeds_for(41, 2) == [42, 43]
    assert seeds_for(7, 2) == seeds_for(7, 3)[:2]  # a larger S keeps the first seeds


def test_two_coordinators_at_once_queue_each_pair_once(pg_schema_url):
    s = Study(pg_schema_url, trials=3)
    try:
        s.search([0.5, 0.7, 0.6])
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda _: confirm("c", storage_url=pg_schema_url, top=3, seeds=3), range(4)))
        assert len(s.marks()) == 9 and len(set(s.marks())) == 9
    finally:
        s.close()


def test_confirmations_take_no_search_slot_and_are_handed_out_after_the_budget_is_spent(study):
    numbers = study.search([0.5, 0.7])
    confirm("c", storage_url=study.url, top=1, seeds=2)
    # The search has 2 of its 4 slots left: queued confirmations come first, then new search trials.
    got = []
    while (trial := study.ask()) is not None:
        got.append(trial_attrs.confirmation_of(trial.user_attrs))
        study.run(trial, 0.55)
    assert got == [(numbers[1], 1), (numbers[1], 2), None, None]
    states = [t.state for t in study.trials()]
    assert states == [TrialState.COMPLETE] * 6
    search = [t for t in study.trials() if trial_attrs.confirmation_of(t.user_attrs) is None]
    assert len(search) == study.n_trials  # exactly N search trials, plus K x S confirmations

    # The search budget is spent: a second configuration's seeds are still handed out.
    done = confirm("c", storage_url=study.url, top=2, seeds=2)
    assert [len(d.added) for d in done] == [0, 2] and len(study.marks()) == 4
    handed = []
    while (trial := study.ask()) is not None:
        handed.append(trial_attrs.confirmation_of(trial.user_attrs))
        study.run(trial, 0.6)
    assert handed == [(done[1].trial.number, 1), (done[1].trial.number, 2)]
    assert sum(1 for t in study.trials() if trial_attrs.confirmation_of(t.user_attrs) is None) == study.n_trials


def test_a_dead_workers_confirmation_is_retried_as_a_confirmation_outside_the_budget(pg_schema_url):
    import time

    s = Study(pg_schema_url, trials=1)
    s.rdb.engine.dispose()
    s.rdb = storage.open_storage(pg_schema_url, heartbeat_interval=1, grace_period=2, max_retry=2)
    s.study = optuna.load_study(study_name="c", storage=s.rdb)
    try:
        number = s.search([0.5])[0]
        confirm("c", storage_url=pg_schema_url, top=1, seeds=1)
        dead = s.ask()  # its worker dies: no beat after the first
        assert trial_attrs.confirmation_of(dead.user_attrs) == (number, 1)
        time.sleep(3.5)
        retry, counts = ask_within_budget(s.study, s.rdb, pg_schema_url, s.n_trials)
        assert retry is not None, "the retry of a confirmation was refused: the search budget is spent"
        assert s.rdb.get_trial(dead._trial_id).state == TrialState.FAIL
        assert trial_attrs.confirmation_of(retry.user_attrs) == (number, 1) and retry.params == dead.params
        s.run(retry, 0.45)
        assert ask_within_budget(s.study, s.rdb, pg_schema_url, s.n_trials)[0] is None
        (summary,) = summarize(s.trials())
        assert (summary.n, summary.failed, summary.pending, summary.mious) == (1, 0, 0, (0.45,))
    finally:
        s.close()


def test_a_running_confirmation_keeps_workers_waiting(study):
    """A worker whose ask finds the budget spent must not leave while a confirmation runs:
    ``counts[RUNNING]`` (what the runner waits on) includes it."""
    study.search([0.5, 0.7, 0.6, 0.4])
    confirm("c", storage_url=study.url, top=1, seeds=1)
    trial = study.ask()
    assert trial is not None and trial_attrs.confirmation_of(trial.user_attrs) is not None
    none, counts = ask_within_budget(study.study, study.rdb, study.url, study.n_trials)
    assert none is None
    assert counts[TrialState.RUNNING] == 1 and counts.confirming[TrialState.RUNNING] == 1
    assert counts.search[TrialState.COMPLETE] == 4


# -- one-line errors -----------------------------------------------------------------------------


def test_bad_input_is_one_error_line(pg_schema_url, monkeypatch):
    monkeypatch.setenv("TUNER_STORAGE", pg_schema_url)
    runner = CliRunner()
    create_study(
        "e",
        CreateOptions(
            storage_url=pg_schema_url, data=None, fingerprint=FINGERPRINT, space_path=None, trials=3, seed_config=False
        ),
    )
    one_cli_error(runner.invoke(app, ["confirm", "nope"]), "no study 'nope'")
    one_cli_error(runner.invoke(app, ["confirm", "e", "--top", "2"]), "no complete search trial")
    for option in ("--top", "--seeds"):
        result = runner.invoke(app, ["confirm", "e", option, "0"])
        assert result.exit_code == 2 and result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    one_cli_error(runner.invoke(app, ["status", "e", "--pick", "confirmed"]), "--pick confirmed", "tuner confirm")
    one_cli_error(runner.invoke(app, ["export", "e", "--pick", "confirmed"]), "--pick confirmed")
    s = Study.__new__(Study)
    s.url, s.name, s.n_trials = pg_schema_url, "e", 3
    s.rdb = storage.open_storage(pg_schema_url)
    s.study = optuna.load_study(study_name="e", storage=s.rdb)
    s.spec = StudySpec.of(s.study)
    try:
        s.search([0.5])
        one_cli_error(runner.invoke(app, ["confirm", "e", "--top", "2"]), "only 1 complete search trial", "--top 1")
    finally:
        s.close()


# -- the readers ---------------------------------------------------------------------------------


def _confirmed_study(url: str) -> Study:
    """Search 0.50 / 0.70 / 0.65 / 0.40; the top two confirmed with 3 seeds: the 0.70 run was lucky
    (0.55, 0.60, 0.50), the 0.65 one holds (0.63, 0.64, 0.62)."""
    s = Study(url, trials=4)
    numbers = s.search([0.50, 0.70, 0.65, 0.40])
    confirm("c", storage_url=url, top=2, seeds=3)
    scores = {numbers[1]: [0.55, 0.60, 0.50], numbers[2]: [0.63, 0.64, 0.62]}
    while (trial := s.ask()) is not None:
        number, seed = trial_attrs.confirmation_of(trial.user_attrs)
        s.run(trial, scores[number][seed - 1])
    return s


def test_status_export_and_report_show_the_confirmed_summary_and_pick_by_mean_minus_se(
    pg_schema_url, monkeypatch, tmp_path
):
    from rich.console import Console

    from storage.summaries import open_reader
    from tuner import status

    s = _confirmed_study(pg_schema_url)
    try:
        engine = open_reader(pg_schema_url)
        head = status.find_or_fail(engine, "c", pg_schema_url)
        plain = status.summarize(status.read_status(engine, head), s.spec)
        summary = status.summarize(status.read_status(engine, head, Pick.parse("confirmed")), s.spec)
        engine.dispose()
    finally:
        s.close()
    assert [(r.name, r.finished, r.budget) for r in status.list_studies(pg_schema_url)] == [("c", 4, 4)]  # `tuner list`
    assert plain.best.number == 1 and plain.best.value == pytest.approx(0.70)  # the single-run winner
    assert plain.finished == 4 and plain.confirming["COMPLETE"] == 6  # the budget counts search trials only
    assert summary.best.number == 2 and summary.picked.number == 2  # confirmation reverses the order
    lucky, steady = summary.confirmed
    assert (lucky.number, lucky.n, lucky.search_miou) == (1, 3, pytest.approx(0.70))
    assert lucky.mean == pytest.approx(0.55) and lucky.sd == pytest.approx(0.05)
    assert lucky.minimum == pytest.approx(0.50)
    assert steady.mean == pytest.approx(0.63) and steady.sd == pytest.approx(0.01)
    console = Console(record=True, width=200)
    status.render_status(summary, "x", console)
    text = console.export_text()
    assert "confirmed configurations" in text and "pick:     confirmed -> trial 2" in text
    assert "progress: 4/4 finished" in text and "confirm:  6/6 confirmation trials complete" in text

    monkeypatch.setenv("TUNER_STORAGE", pg_schema_url)
    runner = CliRunner()
    result = runner.invoke(app, ["export", "c", "--pick", "confirmed"])
    assert result.exit_code == 0, result.stderr
    assert "# Confirmed pick of study 'c'" in result.stdout and "# trial: 2" in result.stdout
    assert "trial 1: n 3, mean 0.5500, sd 0.0500, min 0.5000" in result.stdout
    assert "seed: 0" in result.stdout  # the search run's own config, not a confirmation seed
    assert "# trial: 1" in runner.invoke(app, ["export", "c"]).stdout  # the default still the single best run

    page = tmp_path / "r.html"
    result = runner.invoke(app, ["report", "c", "-o", str(page), "--pick", "confirmed"])
    assert result.exit_code == 0, result.stderr
    html = page.read_text()
    assert "Confirmed configurations" in html and "<td>1</td><td>0.7000</td><td>3</td><td>0.5500</td>" in html
    assert "confirmed pick: mean 0.6300" in html


def test_the_demo_refuses_the_confirmed_pick_before_it_writes_anything(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNER_HOME", str(tmp_path / "home"))
    one_cli_error(CliRunner().invoke(app, ["demo", "--pick", "confirmed"]), "--pick confirmed", "tuner confirm")
    assert not (tmp_path / "home").exists()


# -- real workers racing -------------------------------------------------------------------------


@pytest.mark.slow
def test_four_racing_workers_finish_exactly_n_search_and_k_x_s_confirmation_trials_none_pruned(
    pg_url, tmp_path, synth_npz
):
    """A budget of 6 search trials, 2 of them finished by hand first (the best, so the top 2 are
    known); once the workers train the others, two coordinators at once confirm the top 2 with 2
    seeds: exactly 6 search and 4 confirmation trials finish, the 4 never reach the pruner
    (Hyperband from epoch 1: every trained search trial leaves a rung record), and every worker ends."""
    import os
    import subprocess
    import time

    from helpers import BIN, run_cli

    n_search, top, seeds = 6, 2, 2
    data = synth_npz(48, seed=3)
    space = tiny_space(tmp_path / "space.yaml", epochs=2)
    env = {"TUNER_STORAGE": pg_url}
    created = run_cli(
        "tuner",
        "create",
        "s",
        "--data",
        str(data),
        "--space",
        str(space),
        "--trials",
        str(n_search),
        "--pruner",
        "hyperband",
        "--min-epochs",
        "1",
        "--no-seed-config",
        env=env,
    )
    assert created.returncode == 0, created.stderr
    rdb = storage.open_storage(pg_url, heartbeat_interval=None)
    study = optuna.load_study(study_name="s", storage=rdb)
    spec = StudySpec.of(study)
    by_hand = []
    for miou in (0.9, 0.8):  # finished as a worker would record them, without training
        trial, _ = ask_within_budget(study, rdb, pg_url, n_search)
        trial_attrs.record_start(trial, spec.space.sample(trial), {"host": "h", "pid": 1, "gpu": None}, {})
        trial_attrs.record_result(trial, FakeResult(miou))
        study.tell(trial, miou)
        by_hand.append(trial.number)
    workers = [
        subprocess.Popen(
            [str(BIN / "worker"), "run", "--study", "s", "--data", str(data), "--quiet"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **env},
        )
        for _ in range(4)
    ]
    try:
        deadline = time.monotonic() + 400
        while not any(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False)):
            assert time.monotonic() < deadline and all(w.poll() is None for w in workers), "no worker started"
            time.sleep(0.2)
        coordinators = [
            subprocess.Popen(
                [str(BIN / "tuner"), "confirm", "s", "--top", str(top), "--seeds", str(seeds)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, **env},
            )
            for _ in range(2)
        ]
        said = [c.communicate(timeout=120) for c in coordinators]
        assert [c.returncode for c in coordinators] == [0, 0], said
        outputs = [w.communicate(timeout=600)[0] for w in workers]
        assert [w.returncode for w in workers] == [0] * 4, "\n".join(outputs)
        trials = study.get_trials(deepcopy=False)
    finally:
        rdb.engine.dispose()

    search = [t for t in trials if trial_attrs.confirmation_of(t.user_attrs) is None]
    confirming = [t for t in trials if trial_attrs.confirmation_of(t.user_attrs) is not None]
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in search) == n_search
    assert [t.state for t in confirming] == [TrialState.COMPLETE] * (top * seeds)
    assert len(trials) == n_search + top * seeds  # nothing overran, nothing queued twice, nothing failed
    assert sorted(int(said[i][0].split("queued ")[-1].split()[0]) for i in range(2)) == [0, top * seeds]
    by_number = {t.number: t for t in trials}
    marks = sorted(trial_attrs.confirmation_of(t.user_attrs) for t in confirming)
    confirmed = sorted({m[0] for m in marks})
    assert marks == [(n, s) for n in by_hand for s in (1, 2)] and confirmed == by_hand
    for trial in confirming:
        number, seed = trial_attrs.confirmation_of(trial.user_attrs)
        assert trial.params == by_number[number].params
        confirmed_config = by_number[number].user_attrs[trial_attrs.CONFIG]
        assert trial.user_attrs[trial_attrs.CONFIG] == {**confirmed_config, "seed": seed}
        assert len(trial.intermediate_values) == 2  # every epoch recorded ...
        assert not [k for k in trial.system_attrs if k.startswith("completed_rung")]  # ... none judged
    trained = [t for t in search if t.number not in by_hand]
    assert len(trained) == n_search - 2 and all(
        any(k.startswith("completed_rung") for k in t.system_attrs) for t in trained
    )
    assert "confirms trial" in "".join(outputs)

    again = run_cli("tuner", "confirm", "s", "--top", str(top), "--seeds", str(seeds), env=env)
    assert again.returncode == 0 and "queued 0 confirmation trial(s)" in again.stdout, again.stderr
    shown = run_cli("tuner", "status", "s", "--pick", "confirmed", env=env)
    assert shown.returncode == 0 and "confirmed configurations" in shown.stdout, shown.stderr
