"""``tuner report``: one self-contained HTML file about a study, to read, send and archive.

The file needs no server and no network: plotly.js is inlined once in the head and every plot
is a plotly figure in the page; the best trial's validation images (a PNG the worker uploaded as
an artifact) are embedded as a data URI. Sections, in order (their HTML ids in brackets):
the study header [header], the Pareto front for several objectives [pareto], optimisation
history [history], learning curves [curves], parameter importance [importance], slices and
parallel coordinates of the top parameters [params], per-class IoU of the 10 best trials
[per-class], the best trial's confusion matrix and validation images [best], and the best
configuration as ``tuner export`` writes it [config]. After the history: trials in flight and
near-duplicate suggestions [parallelism] (:mod:`tuner.report_parallelism`).

The study is read with a few bulk queries (:mod:`storage.summaries`); Optuna's importance
evaluator (and its Pareto plot beyond two objectives) reads it as a study through a read-only
snapshot (:class:`storage.snapshot.SnapshotStorage`). Parameter importance is PED-ANOVA: on 5,000
trials it takes a fraction of a second where fANOVA trains a random forest for seconds
(docs/benchmarks.md).
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Iterator
import contextlib
import dataclasses
import datetime
import gc
import html
from pathlib import Path
import tempfile
from typing import Any
import warnings

from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from contract import trial_attrs as attrs
from contract.atomic import writable_problem
from contract.confirm import Confirmed, pick_confirmed
from contract.confirm import summarize as summarize_confirmed
from contract.pareto import Pick, front_trials, pick_trial
from contract.study_spec import StudySpec
import storage
from storage.optuna_internals import trial_id
from storage.summaries import StudyHead, load_trials, open_reader
from tuner.report_figures import complete as complete_trials
from tuner.study import StudyError

#: Every section of the report, in order: (HTML id, heading).
SECTIONS = (
    ("header", "Study"),
    ("pareto", "Pareto front"),
    ("history", "Optimisation history"),
    ("parallelism", "Parallelism"),
    ("curves", "Learning curves"),
    ("importance", "Parameter importance"),
    ("params", "Top parameters"),
    ("per-class", "IoU per class"),
    ("confirmed", "Confirmed configurations"),
    ("best", "Best trial"),
    ("config", "Best configuration"),
)
BEST_N = 10  # trials in the per-class IoU section
TOP_SLICES = 4  # parameters in the slice plot
TOP_PARALLEL = 6  # parameters in the parallel-coordinates plot
METRIC_NAME = "validation mIoU"
_TRIAL_ATTRS = (attrs.WORKER, attrs.PROVENANCE, attrs.CONFIRMS)  # read for every trial; the best ones get all


@dataclasses.dataclass(frozen=True)
class ReportData:
    """Everything the report shows, read from the database (and artifact store) once."""

    head: StudyHead
    spec: StudySpec | None
    masked_url: str
    trials: list[FrozenTrial]  # every trial, with _TRIAL_ATTRS and epoch values
    top: list[FrozenTrial]  # the BEST_N best COMPLETE trials, best first, with all their user attributes
    best: FrozenTrial | None  # top[0]; with two objectives the trial ``pick`` chooses from the front
    preview_png: bytes | None
    preview_note: str | None  # why there is no image grid, when there is none
    now: datetime.datetime
    pick: Pick = Pick()
    front: list[FrozenTrial] = dataclasses.field(default_factory=list)  # two objectives: by cost
    confirmed: list[Confirmed] = dataclasses.field(default_factory=list)  # `tuner confirm`'s, per configuration

    @property
    def objectives(self) -> tuple[str, ...]:
        from tuner.readers import objective_names

        return objective_names(self.spec, self.head.directions)


def write_report(name: str, *, storage_url: str | None, output: Path, artifact_dir: Path | None = None,
                 pick: Pick | str = Pick()) -> Path:
    """Read study ``name`` and write its report to ``output`` (atomically).

    Raises:
        StudyError: no such study, unwritable output, a Pareto ``pick`` for a study with one objective.
        PickError: ``pick`` is not a pick rule.
        ConfirmError: ``--pick confirmed`` before any configuration has its confirmation runs.
        StorageError: unreachable database or no schema.
    """
    from tuner.export import write_atomic

    pick = Pick.parse(pick)
    problem = writable_problem(output)
    if problem is not None:
        raise StudyError(f"cannot write {output}: {problem}")
    with _no_cyclic_gc():
        page = render(read_report(name, storage_url, artifact_dir, pick))
    write_atomic(output, page)
    return output


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while the report's objects are made.

    Reading 5,000 trials makes about a million objects that all live until the page is written:
    each collection would scan them for nothing (a fifth of the read time; docs/benchmarks.md).
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def read_report(name: str, storage_url: str | None, artifact_dir: Path | None, pick: Pick = Pick()) -> ReportData:
    from tuner.confirm import read_confirmations
    from tuner.readers import check_pick, find_or_fail, spec_or_none, utc_now

    url = storage.resolve_url(storage_url)
    engine = open_reader(url)
    try:
        head = find_or_fail(engine, name, url)
        check_pick(pick, len(head.directions), name)
        spec = spec_or_none(head)
        trials = load_trials(engine, head.study_id, user_attr_keys=_TRIAL_ATTRS)
        ranked = best_first(trials, head.directions)[:BEST_N]
        two = len(head.directions) == 2
        confirmations = read_confirmations(engine, head.study_id)
        if pick.confirmed:
            picked: FrozenTrial | None = pick_confirmed(confirmations, name)[0]
        else:
            picked = pick_trial(trials, head.directions, pick) if two else None
        front = front_trials(trials, head.directions) if two else []
        # Again, with every attribute (per-class IoU, config, confusion matrix, preview id).
        wanted = {trial_id(t) for t in ranked} | ({trial_id(picked)} if picked is not None else set())
        full = {t.number: t for t in load_trials(engine, head.study_id, trial_ids=wanted, intermediate=False)}
        top = [full[t.number] for t in ranked]
    finally:
        engine.dispose()
    best = full[picked.number] if picked is not None else top[0] if top else None
    preview, note = _preview(best, artifact_dir)
    return ReportData(head=head, spec=spec, masked_url=storage.mask_url(url), trials=trials, top=top, best=best,
                      preview_png=preview, preview_note=note, now=utc_now(), pick=pick, front=front,
                      confirmed=summarize_confirmed(confirmations))


def best_first(trials: list[FrozenTrial], directions: tuple[StudyDirection, ...]) -> list[FrozenTrial]:
    """COMPLETE trials with finite values by their first objective (mIoU), best first; lower
    number first on ties."""
    from tuner.report_figures import complete

    sign = 1.0 if directions[0] == StudyDirection.MAXIMIZE else -1.0
    done = complete(trials)
    return sorted(done, key=lambda t: (-sign * t.values[0], t.number))


def _preview(best: FrozenTrial | None, artifact_dir: Path | None) -> tuple[bytes | None, str | None]:
    if best is None:
        return None, "no completed trial yet"
    artifact_id = best.user_attrs.get(attrs.PREVIEW_ARTIFACT)
    if not artifact_id:
        return None, "the worker saved no validation images for this trial (workers need --artifact-dir)"
    from contract.artifacts import ArtifactDirError, is_artifact_id, open_artifact_store
    from contract.textfile import short_repr

    if not is_artifact_id(artifact_id):
        return None, f"the recorded artifact id {short_repr(artifact_id)} is not an artifact id (expected a UUID)"
    if artifact_dir is None:
        return None, f"saved as artifact {artifact_id}: pass --artifact-dir to embed it"
    from optuna.artifacts import download_artifact
    from optuna.artifacts.exceptions import ArtifactNotFound

    try:
        store = open_artifact_store(artifact_dir, create=False)
        with tempfile.TemporaryDirectory(prefix="tuner-report-") as tmp:
            path = Path(tmp) / "preview.png"
            download_artifact(artifact_store=store, file_path=str(path), artifact_id=str(artifact_id))
            return path.read_bytes(), None
    except (ArtifactDirError, ArtifactNotFound, OSError) as exc:
        return None, f"artifact {artifact_id} not readable from {artifact_dir}: {str(exc).splitlines()[0]}"


# -- header -----------------------------------------------------------------------------------


def header_rows(data: ReportData) -> list[tuple[str, str]]:
    """The study header as (label, text) rows."""
    spec, trials = data.spec, data.trials
    counts = Counter(t.state for t in trials)
    search = Counter(t.state for t in trials if attrs.confirmation_of(t.user_attrs) is None)
    finished = search[TrialState.COMPLETE] + search[TrialState.PRUNED]  # what the budget counts
    created = data.head.user_attrs.get("created")
    rows = [("study", data.head.study_name), ("storage", data.masked_url)]
    if isinstance(created, dict):
        rows.append(("created", f"{created.get('at', '-')} by {created.get('by', '-')}"))
    directions = [d.name.lower() for d in data.head.directions]
    if spec is not None and spec.multi_objective and len(spec.objectives) == len(directions):
        rows.append(("objectives", ", ".join(f"{o} ({d})" for o, d in zip(spec.objectives, directions, strict=False))))
    else:
        rows.append(("objectives", ", ".join(directions)))
    if len(directions) == 2:
        n_complete = counts[TrialState.COMPLETE]
        rows.append(("Pareto front", f"{len(data.front)} of {n_complete} complete trials; best = pick {data.pick}"))
    if spec is None:
        rows.append(("spec", "none (study not created by `tuner create`)"))
        rows.append(("budget", f"{finished} finished"))
    else:
        rows += [
            ("budget", f"{finished}/{spec.n_trials} finished (complete + pruned)"),
            ("sampler", f"{spec.sampler} (seed {spec.seed})"),
            ("pruner", f"{spec.pruner} (min {_count(spec.min_epochs, 'epoch')})" if not spec.multi_objective
                       else f"{spec.pruner} (two objectives: nothing prunes them)"),
            ("data fingerprint", spec.data_fingerprint),
        ]
    if data.confirmed:
        n_confirming = len(trials) - sum(search.values())
        rows.append(("confirmation", f"{n_confirming} trials of "
                                     f"`tuner confirm` (outside the budget), {len(data.confirmed)} configurations"))
    rows.append(("trials per state", ", ".join(f"{s.name.lower()} {counts[s]}" for s in TrialState if counts[s])
                 or "none"))
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete or data.now for t in trials if t.datetime_start]
    if starts:
        rows.append(("wall time", f"{_duration((max(ends) - min(starts)).total_seconds())} "
                                  f"({min(starts):%Y-%m-%d %H:%M} to {max(ends):%Y-%m-%d %H:%M} UTC)"))
    seconds = sum(((t.datetime_complete or data.now) - t.datetime_start).total_seconds()
                  for t in trials if t.datetime_start)
    gpu = any(isinstance(p := t.user_attrs.get(attrs.PROVENANCE), dict) and p.get("device") == "gpu"
              for t in trials)
    rows.append(("GPU-hours" if gpu else "device-hours",
                 f"{seconds / 3600:.1f} (sum of trial durations{'' if gpu else '; no trial ran on a GPU'})"))
    workers: Counter[tuple[Any, Any]] = Counter()
    hosts: Counter[str] = Counter()
    for trial in trials:
        if isinstance(trial.user_attrs.get(attrs.WORKER), dict):
            who = attrs.worker_of(trial)
            workers[(who["host"], who["pid"])] += 1
            hosts[str(who["host"])] += 1
    rows.append(("workers", f"{_count(len(workers), 'process', 'processes')} on {_count(len(hosts), 'host')}"))
    if hosts:
        rows.append(("hosts", ", ".join(f"{h} ({n} trials)" for h, n in sorted(hosts.items()))))
    odd = counts[TrialState.COMPLETE] - len(complete_trials(trials))
    if odd:
        rows.append(("not drawn", f"{_count(odd, 'complete trial')} with a value that is not a finite "
                                  "number (inf, nan): left out of ranking and figures"))
    if data.best is not None:
        rows.append(("best", f"trial {data.best.number}: {_best_values(data)}"))
    return rows


def _confirmed_table(confirmed: list[Confirmed]) -> str:
    """Per confirmed configuration: n, mean, sd, min, mean - SE and per-class means over its
    confirmation runs (its search run apart: it was selected for scoring high)."""
    from tuner.report_figures import CLASS_NAMES

    def v(x: float | None) -> str:
        return "-" if x is None else f"{x:.4f}"

    names = "".join(f"<th>{CLASS_NAMES[c]} (mean)</th>" for c in (1, 2, 3, 4))
    rows = []
    for c in confirmed:
        per_class = "".join(f"<td>{'n/a' if c.per_class_iou.get(str(k)) is None else v(c.per_class_iou[str(k)])}</td>"
                            for k in (1, 2, 3, 4))
        rows.append(f"<tr><td>{c.number}</td><td>{v(c.search_miou)}</td><td>{c.n}</td><td>{v(c.mean)}</td>"
                    f"<td>{v(c.sd)}</td><td>{v(c.minimum)}</td><td>{v(c.score)}</td><td>{c.pending}</td>"
                    f"<td>{c.failed}</td>{per_class}</tr>")
    note = _note("Statistics over each configuration's confirmation seeds (tuner confirm); the search run is "
                 "shown apart, as it was chosen for scoring high. --pick confirmed takes the highest mean "
                 "minus one standard error (sd / sqrt(n)).")
    return (note + '<table class="iou"><tr><th>trial</th><th>search run</th><th>n</th><th>mean</th><th>sd</th>'
            f"<th>min</th><th>mean - SE</th><th>pending</th><th>failed</th>{names}</tr>" + "".join(rows) + "</table>")


def _best_values(data: ReportData) -> str:
    """``validation mIoU 0.6123`` and, with two objectives, ``, params 12,345 (pick best-miou)``."""
    from tuner.readers import format_cost

    assert data.best is not None
    text = f"{METRIC_NAME} {data.best.values[0]:.4f}"
    picked = next((c for c in data.confirmed if c.number == data.best.number), None) if data.pick.confirmed else None
    if picked is not None:
        text += (f" (search run); confirmed pick: mean {picked.mean:.4f}, sd {picked.sd:.4f}, "
                 f"min {picked.minimum:.4f} over {picked.n} seeds")
    if len(data.best.values) == 2:
        text += f", {data.objectives[1]} {format_cost(data.best.values[1])} (pick {data.pick})"
    return text



def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


# -- the page ---------------------------------------------------------------------------------


def render(data: ReportData) -> str:
    """The whole HTML page."""
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # PED-ANOVA is "experimental" in Optuna
        return _render(data)


def _render(data: ReportData) -> str:
    from storage.snapshot import SnapshotStorage
    from tuner import report_figures as figs

    head, trials = data.head, data.trials
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    complete = complete_trials(trials)
    # Importance and Optuna's plot read the trials as a study: without values they cannot place.
    drawn = {t.number for t in complete}
    placeable = [t for t in trials if t.state != TrialState.COMPLETE or t.number in drawn]
    study = SnapshotStorage(head.study_name, head.directions, placeable).study()
    maximize = head.directions[0] == StudyDirection.MAXIMIZE
    n_figures = 0

    def figure(fig: figs.Figure) -> str:
        nonlocal n_figures
        n_figures += 1
        return figs.to_div(fig, f"figure-{n_figures}")

    body: dict[str, str] = {}
    body["header"] = _table(header_rows(data))
    if len(head.directions) == 2:
        body["pareto"] = (figure(figs.pareto(trials, data.objectives[1], data.front, data.best,
                                             str(data.pick)))
                          if complete else _note("no completed trial yet"))
    elif len(head.directions) == 3:
        names = [figs.METRIC] + [f"objective {i}" for i in range(1, len(head.directions))]
        body["pareto"] = figure(figs.pareto_optuna(study, names)) if complete else _note("no completed trial yet")
    elif len(head.directions) > 3:
        body["pareto"] = _note(f"a front of {len(head.directions)} objectives is not drawn (2 or 3 can be); "
                               f"the figures below show the first objective, {figs.METRIC}")
    if complete:
        body["history"] = (figure(figs.history_by_number(trials, maximize))
                           + figure(figs.history_by_time(trials, maximize)))
    else:
        body["history"] = _note("no completed trial yet")
    body["parallelism"] = _parallelism_section(data, figure)
    body["curves"] = (figure(figs.learning_curves(trials)) if any(t.intermediate_values for t in finished)
                      else _note("no epoch values reported yet"))

    importances, why = _importances(study, len(complete))
    if importances:
        top = list(importances)
        body["importance"] = figure(figs.importance(importances, "PED-ANOVA")) + (_note(why) if why else "")
        best_first = sorted(complete, key=lambda t: t.values[0], reverse=maximize)[:figs.PARALLEL_BEST]
        body["params"] = (figure(figs.slices(trials, top[:TOP_SLICES]))
                          + figure(figs.parallel(best_first, top[:TOP_PARALLEL], maximize, len(complete))))
    else:
        body["importance"] = body["params"] = _note(why)

    body["per-class"] = (figure(figs.per_class_iou(data.top)) + _per_class_table(data.top)
                         if data.top else _note("no completed trial yet"))
    body["confirmed"] = (_confirmed_table(data.confirmed) if data.confirmed else
                         _note(f"no configuration confirmed yet: `tuner confirm {head.study_name} --top K --seeds S` "
                               "re-runs the best ones with more seeds"))
    body["best"] = _best_section(data, figure)
    body["config"] = _config_section(data)

    nav = " · ".join(f'<a href="#{sid}">{html.escape(title)}</a>' for sid, title in SECTIONS if sid in body)
    sections = "\n".join(
        f'<section id="{sid}"><h2>{html.escape(title)}</h2>\n{body[sid]}\n</section>'
        for sid, title in SECTIONS if sid in body
    )
    title = f"tuner report: {head.study_name}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="generator" content="mars-tuner report">
<title>{html.escape(title)}</title>
<style>{_CSS}</style>
<script type="text/javascript">{_plotly_js()}</script>
</head>
<body data-figures="{n_figures}">
<h1>{html.escape(title)}</h1>
<p class="meta">written {data.now:%Y-%m-%d %H:%M} UTC from {html.escape(data.masked_url)}</p>
<nav>{nav}</nav>
{sections}
</body>
</html>
"""


def _plotly_js() -> str:
    """plotly.js as plotly ships it (what ``plotly.offline.get_plotlyjs`` reads, without its imports)."""
    from importlib import resources

    return (resources.files("plotly") / "package_data" / "plotly.min.js").read_text(encoding="utf-8")


def _importances(study: Any, n_complete: int) -> tuple[dict[str, float], str]:
    """PED-ANOVA importances for the first objective (mIoU), most important first; with a note
    when there are none, or when PED-ANOVA warned (its warnings belong on the page, not stderr)."""
    if n_complete < 2:
        return {}, "importance needs at least 2 completed trials"
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    target = None
    if len(study.directions) > 1:
        # With an explicit target PED-ANOVA explains *low* values: negate a maximised objective.
        sign = -1.0 if study.directions[0] == StudyDirection.MAXIMIZE else 1.0
        target = lambda t: sign * t.values[0]  # noqa: E731
    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always", UserWarning)
            warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes", category=UserWarning)
            values = get_param_importances(study, evaluator=PedAnovaImportanceEvaluator(), target=target)
    except (ValueError, RuntimeError) as exc:  # e.g. no parameter varied
        return {}, f"importance not computable: {str(exc).splitlines()[0]}"
    if not values:
        return {}, "no searched parameter"
    said = {" ".join(str(w.message).split()) for w in warned if issubclass(w.category, UserWarning)}
    return dict(values), "; ".join(f"PED-ANOVA: {s}" for s in sorted(said))


def _parallelism_section(data: ReportData, figure: Any) -> str:
    from tuner import report_parallelism

    view = report_parallelism.summarize(data.trials, data.now)
    if view is None:
        return _note("no trial has started yet")
    return _table(report_parallelism.rows(view)) + figure(report_parallelism.figure(view))


def _best_section(data: ReportData, figure: Any) -> str:
    from tuner import report_figures as figs

    best = data.best
    if best is None:
        return _note("no completed trial yet")
    parts = [f"<p>trial {best.number}: {html.escape(_best_values(data))}</p>"]
    matrix = attrs.confusion_matrix_of(best)
    if matrix is not None:
        parts.append(figure(figs.confusion(matrix, best.number)))
    elif attrs.CONFUSION_MATRIX in best.user_attrs:
        parts.append(_note("the confusion matrix recorded for this trial is not a square table of pixel counts"))
    else:
        parts.append(_note("no confusion matrix recorded for this trial (older worker)"))
    if data.preview_png is not None:
        encoded = base64.b64encode(data.preview_png).decode("ascii")
        parts.append('<figure><img class="preview" alt="validation images: image, truth, prediction" '
                     f'src="data:image/png;base64,{encoded}"><figcaption>validation images of trial '
                     f"{best.number}: image, truth, prediction. {_legend()}</figcaption></figure>")
    else:
        parts.append(_note(f"validation images: {data.preview_note}"))
    return "\n".join(parts)


def _legend() -> str:
    from tuner.report_figures import CLASS_NAMES

    return " ".join(
        f'<span class="swatch" style="background: rgb{attrs.CLASS_COLOURS[c]}"></span>{CLASS_NAMES[c]}'
        for c in range(len(attrs.CLASS_COLOURS))
    )


def _config_section(data: ReportData) -> str:
    from contract.config import ConfigError, TrainConfig
    from tuner.export import config_of
    from tuner.export import render as render_config

    best = data.best
    if best is None:
        return _note("no completed trial yet")
    try:
        if data.spec is not None:
            config = config_of(best, data.spec)
        elif attrs.config_of(best) is not None:
            config = TrainConfig.from_dict(attrs.config_of(best))  # type: ignore[arg-type]
        else:
            return _note("no recorded config and no search space to rebuild it from")
    except ConfigError as exc:
        return _note(str(exc))
    text = render_config(config, "yaml", study_name=data.head.study_name, trial=best, pick=data.pick,
                         objectives=data.objectives)
    return f"<pre class=\"config\">{html.escape(text)}</pre>"


def _per_class_table(trials: list[FrozenTrial]) -> str:
    from tuner.report_figures import CLASS_NAMES

    head = "".join(f"<th>{CLASS_NAMES[c]}</th>" for c in (1, 2, 3, 4))
    rows = []
    for trial in trials:
        per_class = attrs.per_class_iou_of(trial)
        cells = "".join(
            f"<td>{'n/a' if per_class.get(str(c)) is None else f'{per_class[str(c)]:.4f}'}</td>" for c in (1, 2, 3, 4)
        )
        rows.append(f"<tr><td>{trial.number}</td><td>{trial.values[0]:.4f}</td>{cells}</tr>")
    return (f'<table class="iou"><tr><th>trial</th><th>{METRIC_NAME}</th>{head}</tr>'
            + "".join(rows) + "</table>")


def _table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="header">{body}</table>'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
nav { margin-bottom: 1.5em; } nav a { color: #1f77b4; }
section { margin: 2em 0; border-top: 1px solid #ddd; }
table { border-collapse: collapse; } th, td { padding: 2px 10px; text-align: left; }
table.header th { color: #555; font-weight: normal; } table.iou td { text-align: right; }
p.note { color: #777; font-style: italic; } p.meta { color: #777; }
pre.config { background: #f6f6f6; padding: 1em; overflow-x: auto; }
span.swatch { display: inline-block; width: 1em; height: 1em; margin: 0 0.3em 0 0.8em;
              vertical-align: middle; border: 1px solid #999; }
img.preview { image-rendering: pixelated; max-width: 100%; border: 1px solid #ccc; }
"""

__all__ = ["SECTIONS", "ReportData", "header_rows", "read_report", "render", "write_report"]
