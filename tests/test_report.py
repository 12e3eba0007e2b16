"""``tuner report``: one self-contained HTML file that parses, has every section, embeds the best
trial's images, and renders in a real headless Chromium without console errors.

Most studies here are built by hand (ask/tell with the attributes a worker writes), so they cost
no training; one test runs a real worker with an artifact store, end to end.

tests/report_page.py parses the page and drives the browser. Chromium: the browser tests skip when
``chromium`` is not installed, unless ``CI`` is set, where its absence fails them (Debian:
``apt-get install -y chromium``).
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from pathlib import Path
import re
import subprocess

from helpers import BIN, LEARNING_RATE_ONLY, tiny_space
import numpy as np
import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState
import pytest
from report_page import SECTION_IDS, chromium, parse, render_in_chromium
import yaml

from contract import trial_attrs as attrs
from contract.study_spec import StudySpec
import storage
from tuner import export, report_sections
from tuner import report as tuner_report
from tuner.study import CreateOptions, StudyError, create_study
from worker.training import preview

FINGERPRINT = "ab" * 32


def _study(url: str, name: str = "mars", trials: int = 13) -> tuple[optuna.Study, StudySpec, RDBStorage]:
    create_study(
        name, CreateOptions(storage_url=url, data=None, fingerprint=FINGERPRINT, space_path=None, trials=trials)
    )
    rdb = storage.open_storage(url, heartbeat_interval=None)
    study = optuna.load_study(study_name=name, storage=rdb, sampler=optuna.samplers.RandomSampler(seed=0))
    return study, StudySpec.of(study), rdb


def _fill(study: optuna.Study, spec: StudySpec, n_complete: int = 11, *, artifacts: Path | None = None) -> dict:
    """COMPLETE trials with everything a worker records, 2 PRUNED, 1 FAIL, 1 RUNNING."""
    rng = np.random.default_rng(0)
    store = None
    if artifacts is not None:
        from contract.artifacts import open_artifact_store

        store = open_artifact_store(artifacts, create=True)
    previews = {}
    for i in range(n_complete + 4):
        trial = study.ask()
        config = spec.space.sample(trial)
        host = f"node-{i % 3}"
        attrs.record_start(trial, config, {"host": host, "pid": 100 + i % 2, "gpu": 0}, {"device": "cpu"})
        epochs = 3 if i < n_complete else 1
        for step in range(1, epochs + 1):
            trial.report(float(0.1 * step + 0.01 * i), step)
        if i == n_complete + 2:
            study.tell(trial, state=TrialState.FAIL)
        if i >= n_complete + 2:  # the last one stays RUNNING
            continue
        if i >= n_complete:
            study.tell(trial, state=TrialState.PRUNED)
            continue
        per_class = {"1": 0.5 + 0.01 * i, "2": 0.4, "3": 0.6, "4": None if i % 2 else 0.1}
        miou = float(np.mean([v for v in per_class.values() if v is not None]))
        trial.set_user_attr(attrs.MIOU, miou)
        trial.set_user_attr(attrs.PER_CLASS_IOU, per_class)
        trial.set_user_attr(attrs.CONFUSION_MATRIX, (rng.integers(0, 50, (5, 5)) + np.eye(5, dtype=int) * 900).tolist())
        if store is not None:
            from optuna.artifacts import upload_artifact

            # Bands that differ per trial: each trial's PNG is its own, and quick to compress (noise is not).
            rows = np.broadcast_to(np.arange(64)[None, :, None], (3, 64, 128))
            sample = preview.PreviewSample(
                images=(rows + i) / 80, truth=(rows // 16 + i) % 5, prediction=(rows // 8 + i) % 5
            )
            png = preview.write_png(sample, artifacts.parent / f"preview-{i}.png")
            previews[trial.number] = png.read_bytes()
            trial.set_user_attr(
                attrs.PREVIEW_ARTIFACT, upload_artifact(artifact_store=store, file_path=str(png), study_or_trial=trial)
            )
        study.tell(trial, miou)
    return previews


# -- the file -------------------------------------------------------------------------------------


def test_report_is_self_contained_with_every_section(pg_schema_url, tmp_path):
    study, spec, rdb = _study(pg_schema_url)
    artifacts = tmp_path / "artifacts"
    previews = _fill(study, spec, artifacts=artifacts)
    best = study.best_trial
    out = tmp_path / "out" / "report.html"

    tuner_report.write_report("mars", storage_url=pg_schema_url, output=out, artifact_dir=artifacts)
    text = out.read_text()
    page = parse(text)

    # Every section of a single-objective study, in order; no Pareto front.
    expected = [s for s in SECTION_IDS if s != "pareto"]
    assert [i for i in page.ids if i in SECTION_IDS] == expected
    # Offline: no external script, stylesheet or image; plotly.js inlined exactly once.
    assert page.external == []
    assert all(not s.get("src") for s in page.scripts)
    from plotly.offline import get_plotlyjs

    assert text.count(get_plotlyjs()[:200]) == 1
    assert int(re.search(r'data-figures="(\d+)"', text).group(1)) == text.count('class="plotly-graph-div"')

    # Header facts.
    for fact in (
        "budget</th><td>13/13 finished",
        "sampler</th><td>tpe (seed 0)",
        FINGERPRINT,
        "complete 11",
        "pruned 2",
        "fail 1",
        "running 1",
        "device-hours",
        "6 processes on 3 hosts",
        "node-0 (5 trials)",
    ):
        assert fact in text, fact
    # Per-class IoU of the 10 best, best first.
    table = text[text.index('<table class="iou">') :]
    rows = re.findall(r"<tr><td>(\d+)</td><td>([\d.]+)</td>", table[: table.index("</table>")])
    ranked = sorted((t for t in study.get_trials() if t.state == TrialState.COMPLETE), key=lambda t: -t.value)
    assert [int(n) for n, _ in rows] == [t.number for t in ranked[:10]]
    # The best trial's images are the worker's PNG, embedded.
    embedded = [src for src in page.images if src.startswith("data:image/png;base64,")]
    assert len(embedded) == 1
    assert base64.b64decode(embedded[0].split(",", 1)[1]) == previews[best.number]
    # The configuration is exactly what `tuner export` writes.
    config_text = export.render(export.config_of(best, spec), "yaml", study_name="mars", trial=best)
    assert html.escape(config_text) in text
    assert yaml.safe_load(config_text) == best.user_attrs[attrs.CONFIG]
    rdb.engine.dispose()


def test_report_without_artifact_dir_says_where_the_images_are(pg_schema_url, tmp_path):
    study, spec, rdb = _study(pg_schema_url)
    _fill(study, spec, n_complete=3, artifacts=tmp_path / "artifacts")
    out = tmp_path / "r.html"
    tuner_report.write_report("mars", storage_url=pg_schema_url, output=out)
    text = out.read_text()
    assert "pass --artifact-dir to embed it" in text and parse(text).images == []
    assert "IoU per class, 3 best trials" in text
    rdb.engine.dispose()


def test_report_of_two_objectives_draws_the_pareto_front(pg_schema_url, tmp_path):
    storage.init_schema(pg_schema_url)
    rdb = storage.open_storage(pg_schema_url, heartbeat_interval=None)
    study = optuna.create_study(
        study_name="mo", storage=rdb, directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0)
    )
    for i in range(8):
        trial = study.ask()
        x = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        trial.suggest_categorical("filters", [8, 16])
        study.tell(trial, [0.5 + 0.01 * i, 1000.0 + 10 * i + x])
    out = tmp_path / "mo.html"
    tuner_report.write_report("mo", storage_url=pg_schema_url, output=out)
    text = out.read_text()
    page = parse(text)
    assert [i for i in page.ids if i in SECTION_IDS] == SECTION_IDS
    assert "Pareto front" in text and "spec</th><td>none" in text
    assert "maximize, minimize" in text
    rdb.engine.dispose()


def test_report_of_an_empty_study_and_bad_input(pg_schema_url, tmp_path):
    study, _, rdb = _study(pg_schema_url)
    out = tmp_path / "empty.html"
    tuner_report.write_report("mars", storage_url=pg_schema_url, output=out)
    assert "no completed trial yet" in out.read_text()
    with pytest.raises(StudyError, match=r"no study 'nosuch'.*mars"):
        tuner_report.write_report("nosuch", storage_url=pg_schema_url, output=tmp_path / "x.html")
    with pytest.raises(StudyError, match="is a directory"):
        tuner_report.write_report("mars", storage_url=pg_schema_url, output=tmp_path)
    assert not (tmp_path / "x.html").exists()
    rdb.engine.dispose()


def test_preview_grid_shows_image_truth_and_prediction(tmp_path):
    images = np.linspace(0, 1, 2 * 64 * 128).reshape(2, 64, 128)
    truth = np.full((2, 64, 128), 2)
    prediction = np.full((2, 64, 128), 4)
    sample = preview.sample(images, truth, prediction, n=6)  # fewer images than asked: all of them
    grid = preview.grid(sample)
    scale, gap = preview.SCALE, preview.GAP
    assert grid.shape == (2 * 64 * scale + 3 * gap, 3 * 128 * scale + 4 * gap, 3)
    y = gap + 10
    assert tuple(grid[y, gap + 128 * scale + gap + 5]) == tuple(preview.PALETTE[2])  # truth: bedrock
    assert tuple(grid[y, gap + 2 * (128 * scale + gap) + 5]) == tuple(preview.PALETTE[4])  # prediction: big rock
    assert grid[y, gap + 5, 0] == grid[y, gap + 5, 1] == grid[y, gap + 5, 2]  # the image is gray
    from PIL import Image

    png = preview.write_png(sample, tmp_path / "p.png")
    assert Image.open(io.BytesIO(png.read_bytes())).size == (grid.shape[1], grid.shape[0])
    picked = preview.sample(
        np.arange(10)[:, None, None] * np.ones((10, 4, 4)), np.zeros((10, 4, 4), int), np.zeros((10, 4, 4), int), n=3
    )
    assert [int(v) for v in picked.images[:, 0, 0]] == [0, 4, 9]  # spread over the split


# -- a real browser ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_report_renders_in_chromium_without_console_errors(pg_schema_url, tmp_path):
    chromium()
    study, spec, rdb = _study(pg_schema_url)
    _fill(study, spec, artifacts=tmp_path / "artifacts")
    out = tmp_path / "report.html"
    tuner_report.write_report("mars", storage_url=pg_schema_url, output=out, artifact_dir=tmp_path / "artifacts")
    shot = Path(os.environ.get("REPORT_SCREENSHOT", tmp_path / "report.png"))
    dom, problems = render_in_chromium(out, tmp_path, screenshot=shot)
    assert problems == []
    figures = int(re.search(r'data-figures="(\d+)"', dom).group(1))
    drawn = re.findall(r'<div[^>]*class="[^"]*plotly-graph-div js-plotly-plot', dom)
    assert figures >= 8 and len(drawn) == figures  # plotly drew every figure
    assert dom.count('class="main-svg"') >= figures
    assert shot.stat().st_size > 10_000
    rdb.engine.dispose()


@pytest.mark.slow
def test_browser_check_catches_console_errors(tmp_path):
    """The check above could fail: a page with an error and a network load is caught."""
    chromium()
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<html><head></head><body><script>console.error("boom");</script>'
        '<img src="https://cdn.example.org/x.png"></body></html>'
    )
    _, problems = render_in_chromium(bad, tmp_path)
    assert any("boom" in p for p in problems) and any("cdn.example.org" in p for p in problems), problems


# -- end to end, with a real worker ---------------------------------------------------------------


@pytest.mark.slow
def test_worker_saves_confusion_matrix_and_images_that_the_report_embeds(pg_url, tmp_path, synth_npz):
    npz = synth_npz(48, seed=3)
    space = tiny_space(tmp_path / "space.yaml", params=LEARNING_RATE_ONLY, epochs=2)
    env = {**os.environ, "TUNER_STORAGE": pg_url}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=600, env=env)

    created = cli(
        "tuner", "create", "s", "--data", str(npz), "--space", str(space), "--trials", "1", "--pruner", "none"
    )
    assert created.returncode == 0, created.stderr
    artifacts = tmp_path / "artifacts"
    run = cli("worker", "run", "--study", "s", "--data", str(npz), "--quiet", "--artifact-dir", str(artifacts))
    assert run.returncode == 0, run.stdout + run.stderr
    rdb = storage.open_storage(pg_url, heartbeat_interval=None)
    best = optuna.load_study(study_name="s", storage=rdb).best_trial
    rdb.engine.dispose()
    matrix = np.asarray(best.user_attrs[attrs.CONFUSION_MATRIX])
    assert matrix.shape == (5, 5) and matrix.sum() == best.user_attrs[attrs.N_VAL] * 64 * 128
    assert best.user_attrs.get(attrs.PREVIEW_ARTIFACT)

    out = tmp_path / "report.html"
    made = cli("tuner", "report", "s", "-o", str(out), "--artifact-dir", str(artifacts))
    assert made.returncode == 0 and f"wrote {out}" in made.stdout, made.stderr
    text = out.read_text()
    assert [src[:22] for src in parse(text).images] == ["data:image/png;base64,"]
    assert f"confusion matrix of trial {best.number}" in text
    assert not math.isnan(best.value)


def test_importance_of_two_objectives_explains_high_miou_not_low():
    """PED-ANOVA explains low values of an explicit target; the report must negate mIoU."""
    from storage.snapshot import SnapshotStorage

    rng = np.random.default_rng(0)
    dists = {"lr": optuna.distributions.FloatDistribution(0, 1), "noise": optuna.distributions.FloatDistribution(0, 1)}
    trials = []
    for _ in range(300):
        lr, noise = float(rng.random()), float(rng.random())
        # Only the best mIoU values depend on lr (a threshold): the worst ones are pure noise.
        miou = 0.9 if lr > 0.9 else 0.5 * noise
        trials.append(
            optuna.trial.create_trial(values=[miou, 1.0], params={"lr": lr, "noise": noise}, distributions=dists)
        )
    for number, trial in enumerate(trials):
        trial.number, trial._trial_id = number, number
    directions = [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    study = SnapshotStorage("mo", directions, trials).study()
    importances, _ = report_sections.importances(study, len(trials))
    assert list(importances)[0] == "lr", importances


def test_figures_reach_plotly_js_as_data_that_cannot_end_the_script():
    """Numbers travel as plotly.js typed arrays (gaps as NaN); no text can close the <script>."""
    from tuner import report_params as figs
    from tuner import report_plotly

    packed = report_plotly.numbers([0.5, None, 2.0])
    raw = np.frombuffer(base64.b64decode(packed["bdata"]), dtype="<f8")
    assert packed["dtype"] == "f8" and raw[0] == 0.5 and math.isnan(raw[1]) and raw[2] == 2.0
    fig = figs.importance({"</script><script>alert(1)</script>": 0.9, "lr": 0.1}, "PED-ANOVA")
    div = report_plotly.to_div(fig, "figure-1")
    assert div.count("</script>") == 1 and div.endswith("</script>")
    assert '"\\u003c/script\\u003e' in div  # the name survives, escaped


def test_parallel_coordinates_take_a_choice_the_search_space_no_longer_has():
    """A study whose space changed (e.g. warm-started) has trials with choices outside the last one's."""
    from optuna.distributions import CategoricalDistribution

    from tuner import report_params as figs

    trials = []
    for number, (value, choices) in enumerate([(8, (8, 16)), (32, (16, 32)), (16, (8, 16))]):
        trial = optuna.trial.create_trial(
            value=0.1 * number, params={"filters": value}, distributions={"filters": CategoricalDistribution(choices)}
        )
        trial.number = number
        trials.append(trial)
    fig = figs.parallel(trials, ["filters"], True, 3)
    ends = [a["text"] for a in fig["layout"]["annotations"] if a["x"] == 1]
    assert ends == ["32", "8"]  # top and bottom of the filters axis
    assert len([t for t in fig["data"] if t["mode"] == "lines"]) == 3


def _three_objectives(url: str, out: Path) -> Path:
    """A report of a study with three objectives (not made by `tuner create`)."""
    storage.init_schema(url)
    rdb = storage.open_storage(url, heartbeat_interval=None)
    study = optuna.create_study(
        study_name="three",
        storage=rdb,
        directions=["maximize", "minimize", "minimize"],
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    for i in range(6):
        trial = study.ask()
        x = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        study.tell(trial, [0.5 + 0.01 * i, 1000.0 - 10 * i + x, float(i % 3)])
    tuner_report.write_report("three", storage_url=url, output=out)
    rdb.engine.dispose()
    return out


def test_report_of_three_objectives_uses_optunas_pareto_plot(pg_schema_url, tmp_path):
    """A study not made by `tuner create` may have more objectives: Optuna's plot draws the front."""
    text = _three_objectives(pg_schema_url, tmp_path / "three.html").read_text()
    assert [i for i in parse(text).ids if i in SECTION_IDS] == SECTION_IDS
    assert "Pareto front" in text and "objective 2" in text


@pytest.mark.slow
def test_report_of_three_objectives_renders_in_chromium(pg_schema_url, tmp_path):
    chromium()
    dom, problems = render_in_chromium(_three_objectives(pg_schema_url, tmp_path / "three.html"), tmp_path)
    assert problems == []
    figures = int(re.search(r'data-figures="(\d+)"', dom).group(1))
    assert len(re.findall(r'<div[^>]*class="[^"]*plotly-graph-div js-plotly-plot', dom)) == figures
