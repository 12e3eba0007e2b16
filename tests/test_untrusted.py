"""Studies from outside the tuner: hostile or hand-made input, never a traceback (issue 22; its files:
tests/test_untrusted_files.py, its messages: tests/test_worker_messages.py).

Each test is a way a careless user, plain Optuna or an attacker with database access broke a
command: one ``error:`` line, or a gap shown in the page, is the contract. Commands run
in-process through Typer's ``CliRunner`` (the same click group catches errors as for a user).
"""

from __future__ import annotations

import os
from pathlib import Path
import re

from helpers import invoke
import pytest
from report_page import SECTION_IDS

from tuner.cli import app as tuner_app

# --- 3. no text from a study can end a <script> or swallow the rest of the report ------------

HOSTILE_TEXT = "<!--<script"


def _hostile_text_study(url: str) -> None:
    """Plain Optuna, as anyone with database access could: the hostile text as a parameter name
    and as a categorical choice (both reach the figures' data)."""
    import optuna

    study = optuna.create_study(
        study_name="s", storage=url, direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0)
    )
    choices = [HOSTILE_TEXT, "</script><script>alert(1)</script>", "a & b"]
    for _ in range(8):
        trial = study.ask()
        choice = trial.suggest_categorical("loss " + HOSTILE_TEXT, choices)
        lr = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        for step in (1, 2):
            trial.report(0.1 * step + lr, step)
        study.tell(trial, 0.5 + 0.1 * choices.index(choice) + lr)


def _html5lib():
    """html5lib (the dev extra); its absence fails under CI, as chromium's does."""
    if os.environ.get("CI"):
        import html5lib

        return html5lib
    return pytest.importorskip("html5lib", reason="pip install -e '.[dev]'")


def _hostile_text_report(tmp_path: Path) -> Path:
    """The report of :func:`_hostile_text_study`'s study (in an SQLite file under ``tmp_path``)."""
    from tuner import report as tuner_report

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    _hostile_text_study(url)
    out = tmp_path / "report.html"
    tuner_report.write_report("s", storage_url=url, output=out)
    return out


#: The sections of a single-objective study's report, in page order.
SINGLE_OBJECTIVE_SECTIONS = [sid for sid in SECTION_IDS if sid != "pareto"]


def test_report_with_script_text_in_a_study_keeps_every_section(tmp_path):
    html5lib = _html5lib()
    text = _hostile_text_report(tmp_path).read_text()
    # What a browser's parser builds (html5lib follows the HTML standard's script states).
    document = html5lib.parse(text, namespaceHTMLElements=False)
    ids = [e.get("id") for e in document.iter() if e.get("id")]
    expected = SINGLE_OBJECTIVE_SECTIONS
    assert [i for i in ids if i in expected] == expected
    n_figures = int(document.find("body").get("data-figures"))
    assert n_figures >= 6 and [i for i in ids if i.startswith("figure-")] == [
        f"figure-{k}" for k in range(1, n_figures + 1)
    ]
    scripts = [e.text or "" for e in document.iter("script")]
    assert sum("Plotly.newPlot" in s for s in scripts[1:]) == n_figures  # each script is whole (0: plotly.js)
    assert not any(HOSTILE_TEXT in s for s in scripts[1:])  # the text travels escaped


@pytest.mark.slow
def test_report_with_script_text_renders_every_figure_in_chromium(tmp_path):
    from report_page import render_in_chromium

    html5lib = _html5lib()
    out = _hostile_text_report(tmp_path)
    n_figures = int(re.search(r'data-figures="(\d+)"', out.read_text()).group(1))
    dom, problems = render_in_chromium(out, tmp_path)  # (skips without chromium, unless CI is set)
    assert problems == []
    drawn = html5lib.parse(dom, namespaceHTMLElements=False)
    expected = SINGLE_OBJECTIVE_SECTIONS
    assert [e.get("id") for e in drawn.iter() if e.get("id") in expected] == expected
    assert len([e for e in drawn.iter("div") if "js-plotly-plot" in (e.get("class") or "")]) == n_figures
    assert HOSTILE_TEXT in dom.replace("&lt;", "<")  # drawn as text (an axis label)


# --- 4. studies plain Optuna or a hand edit made: a line or a gap, never a traceback -------------


def _plain_study(url: str, case: str) -> None:
    import optuna

    n_objectives = {"inf value": 1, "3 objectives": 3, "4 objectives": 4}[case]
    study = optuna.create_study(
        study_name="plain",
        storage=url,
        directions=["maximize"] + ["minimize"] * (n_objectives - 1),
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    for i in range(6):
        trial = study.ask()
        x = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        trial.suggest_int("depth", 2, 5)
        value = float("inf") if case == "inf value" and i == 2 else 0.5 + 0.01 * i + x
        if n_objectives == 1:
            trial.report(value, 1)
        study.tell(trial, value if n_objectives == 1 else [value] + [float(i % 3 + k) for k in range(1, n_objectives)])


@pytest.mark.parametrize("case", ["inf value", "3 objectives", "4 objectives"])
def test_studies_made_by_plain_optuna_show_in_status_list_and_report(tuner_home, tmp_path, case):
    from tuner import report as tuner_report

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    _plain_study(url, case)
    listed = invoke(tuner_app, "list", "--storage", url, env={"COLUMNS": "200"})
    status = invoke(tuner_app, "status", "plain", "--storage", url, env={"COLUMNS": "200"})
    assert listed.exit_code == 0 and status.exit_code == 0, (listed.stderr, status.stderr)
    best = re.search(r"│ (0\.\d{4}) │", listed.stdout).group(1)  # the best value `list` shows
    assert f"best:     {best} (trial 5)" in status.stdout, status.stdout
    out = tmp_path / "plain.html"
    made = invoke(tuner_app, "report", "plain", "-o", out, "--storage", url)
    assert made.exit_code == 0, (made.stderr, made.exception)
    text = out.read_text()
    sections = [sid for sid, _ in tuner_report.SECTIONS if sid != "pareto" or case != "inf value"]
    assert all(f'<section id="{sid}">' in text for sid in sections)
    body = text.split("</head>", 1)[1]  # (plotly.js, in the head, has both words)
    assert "Infinity" not in body and "NaN" not in body
    if case == "inf value":
        assert "1 complete trial with a value that is not a finite number" in text
    if case == "4 objectives":
        assert "a front of 4 objectives is not drawn" in text


def test_export_picks_the_best_finite_trial_as_status_does(tuner_home, tmp_path, npz):
    import optuna

    from contract.config import TrainConfig
    from tuner.study import CreateOptions, create_study

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    create_study(
        "s", CreateOptions(storage_url=url, data=npz, fingerprint=None, space_path=None, trials=3, seed_config=False)
    )
    study = optuna.load_study(study_name="s", storage=url)
    for value in (0.5, float("inf")):  # inf: a hand edit, or plain Optuna's tell
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs={"config": TrainConfig().to_dict()}))
    status = invoke(tuner_app, "status", "s", "--storage", url, env={"COLUMNS": "200"})
    exported = invoke(tuner_app, "export", "s", "-o", tmp_path / "best.yaml", "--storage", url)
    assert "best:     0.5000 (trial 0)" in status.stdout
    assert exported.exit_code == 0 and "wrote the config of trial 0 (value 0.5000)" in exported.stderr


HAND_EDITS = {
    "per_class_iou with strings": {"per_class_iou": {"1": "high", "2": [0.5], "3": None, "4": 0.25}},
    "confusion_matrix with NaN": {"confusion_matrix": [[900, float("nan")], [2, 800]]},
    "confusion_matrix of the wrong shape": {"confusion_matrix": [[1, 2, 3], [4]]},
    "worker as a list": {"worker": ["node-1", 123]},
    "worker fields as lists": {"worker": {"host": ["node-1"], "pid": {"x": 1}, "gpu": "all"}},
}


@pytest.mark.parametrize("case", list(HAND_EDITS))
def test_hand_edited_trial_attributes_are_gaps_not_tracebacks(tuner_home, tmp_path, npz, case):
    import optuna
    from optuna.trial import TrialState

    from contract.config import TrainConfig
    from tuner.study import CreateOptions, create_study

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    create_study(
        "s", CreateOptions(storage_url=url, data=npz, fingerprint=None, space_path=None, trials=3, seed_config=False)
    )
    study = optuna.load_study(study_name="s", storage=url)
    edited = {"config": TrainConfig().to_dict(), "phase": "training", **HAND_EDITS[case]}
    study.add_trial(optuna.trial.create_trial(value=0.5, user_attrs=edited))
    study.add_trial(optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs=edited))
    env = {"COLUMNS": "200"}
    status = invoke(tuner_app, "status", "s", "--storage", url, env=env)
    assert status.exit_code == 0, (status.stderr, status.exception)
    assert "best:     0.5000 (trial 0)" in status.stdout
    exported = invoke(tuner_app, "export", "s", "-o", tmp_path / "best.yaml", "--storage", url)
    assert exported.exit_code == 0, (exported.stderr, exported.exception)
    out = tmp_path / "report.html"
    made = invoke(tuner_app, "report", "s", "-o", out, "--storage", url)
    assert made.exit_code == 0, (made.stderr, made.exception)
    text = out.read_text()
    if case.startswith("per_class_iou"):
        assert "1=n/a 2=n/a 3=n/a 4=0.2500" in status.stdout
        assert "IoU per class: 1=n/a 2=n/a 3=n/a 4=0.2500" in (tmp_path / "best.yaml").read_text()
        assert "<td>n/a</td><td>n/a</td><td>n/a</td><td>0.2500</td>" in text
    if case.startswith("confusion_matrix"):
        assert "the confusion matrix recorded for this trial is not a square table of pixel counts" in text


# --- 8. every cell from the database is escaped: no terminal escapes, no Rich markup ----------

ESCAPES = "\x1b]0;pwned\x07\x1b[2J[link=https://evil.example]click[/link] [bold red]x[/]"


def test_phase_and_created_at_reach_the_terminal_escaped(tuner_home, tmp_path):
    import optuna
    from optuna.trial import TrialState

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = optuna.create_study(study_name="s", storage=url)  # anyone with database access
    study.set_user_attr("created", {"at": ESCAPES, "by": ESCAPES})
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.RUNNING, user_attrs={"phase": ESCAPES, "worker": {"host": ESCAPES, "pid": 1, "gpu": 0}}
        )
    )
    for args in (("list",), ("status", "s")):
        result = invoke(tuner_app, *args, "--storage", url, env={"COLUMNS": "400"})
        assert result.exit_code == 0, (result.stderr, result.exception)
        assert "\x1b" not in result.stdout and "\x07" not in result.stdout, args
        assert "[link=https://evil.example]click[/link] [bold red]x[/]" in result.stdout, args
        assert "\\x1b]0;pwned\\x07" in result.stdout, args
    # A hand-written spec's budget is not a number: `list` shows no budget rather than the text.
    optuna.create_study(study_name="t", storage=url).set_user_attr("tuner_spec", {"n_trials": ESCAPES})
    listed = invoke(tuner_app, "list", "--storage", url, env={"COLUMNS": "400"})
    assert listed.exit_code == 0 and "\x1b" not in listed.stdout and listed.stdout.count("0/-") == 2


# --- 11. small: PED-ANOVA's warning goes on the page, not to stderr -------------------------


def test_importance_warning_of_equal_values_is_a_note_not_stderr(tmp_path):
    import warnings

    import optuna

    from tuner import report as tuner_report

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = optuna.create_study(
        study_name="flat", storage=url, direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0)
    )
    for _ in range(6):  # every trial scores the same: PED-ANOVA cannot tell its quantiles apart
        trial = study.ask()
        trial.suggest_float("lr", 0.1, 0.2)
        study.tell(trial, 0.5)
    out = tmp_path / "flat.html"
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        tuner_report.write_report("flat", storage_url=url, output=out)
    assert [str(w.message) for w in warned if issubclass(w.category, UserWarning)] == []
    assert "PED-ANOVA: Target and region quantiles select the same set of trials" in out.read_text()
    _hostile_text_study(f"sqlite:///{tmp_path / 'other.sqlite'}")  # a study that varies: no note
    tuner_report.write_report("s", storage_url=f"sqlite:///{tmp_path / 'other.sqlite'}", output=out)
    assert "PED-ANOVA:" not in out.read_text()


# --- 12. what a new user sees: the report's figures and header --------------------------


def _whiteness(colour: str) -> int:
    """The darkest channel of ``#rrggbb``: 255 is white."""
    return min(int(colour[i : i + 2], 16) for i in (1, 3, 5))


def test_report_figures_show_every_trial_with_whole_number_ticks():
    import optuna

    from tuner import report_figures as figs
    from tuner import report_params

    dists = {
        "lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
        "gamma": optuna.distributions.FloatDistribution(0, 3),
    }
    trials = []
    for number, (lr, gamma, value) in enumerate([(1e-3, 0.5, 0.40), (5e-3, 2.2, 0.50), (5e-4, 0.8, 0.41)]):
        trial = optuna.trial.create_trial(
            value=value,
            params={"lr": lr, "gamma": gamma},
            distributions=dists,
            intermediate_values={1: value / 3, 2: value / 2, 3: value},
        )
        trial.number = number
        trials.append(trial)
    # The worst trial is drawn in a colour that shows on white (slices and parallel coordinates).
    parallel = report_params.parallel(trials, ["lr", "gamma"], True, 3)
    lines = [t["line"]["color"] for t in parallel["data"] if t["mode"] == "lines"]
    assert len(lines) == 3 and max(_whiteness(c) for c in lines) < 0xE0, lines
    slices = report_params.slices(trials, ["lr", "gamma"])
    for trace in slices["data"]:
        assert _whiteness(trace["marker"]["colorscale"][0][1]) < 0xE0
    assert _whiteness(parallel["data"][-1]["marker"]["colorscale"][0][1]) < 0xE0  # its colour bar
    # Learning curves of a few trials are not a faint haze.
    curves = figs.learning_curves(trials)
    assert curves["data"][0]["opacity"] >= 0.6
    # Trials and epochs are counted: no tick at 0.5.
    assert figs.history_by_number(trials, True)["layout"]["xaxis"]["dtick"] == 1
    assert curves["layout"]["xaxis"]["dtick"] == 1
    assert slices["data"][0]["marker"]["colorbar"]["dtick"] == 1
    # A slice panel leaves room for its tick labels before the next one.
    first, second = slices["layout"]["xaxis"]["domain"], slices["layout"]["xaxis2"]["domain"]
    assert second[0] - first[1] >= 0.05 and slices["layout"]["xaxis"]["nticks"] <= 6


def test_report_header_counts_epochs_in_english(tmp_path):
    from tuner import report as tuner_report
    from tuner.study import CreateOptions, create_study

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    create_study(
        "s",
        CreateOptions(storage_url=url, data=None, fingerprint="ab" * 32, space_path=None, trials=3, seed_config=False),
    )  # the default minimum: 1 epoch before a trial can be pruned
    out = tmp_path / "r.html"
    tuner_report.write_report("s", storage_url=url, output=out)
    assert "hyperband (min 1 epoch)" in out.read_text()
