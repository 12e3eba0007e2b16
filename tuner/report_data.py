"""What ``tuner report`` shows, read from the database (and the artifact store) once.

A few bulk queries (:mod:`storage.summaries`): every trial with the attributes the figures need
and its epoch values, then the best ones again with all their attributes. The sections
(:mod:`tuner.report_sections`) only compute and draw from :class:`ReportData`.
"""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path
import tempfile

from optuna.study import StudyDirection
from optuna.trial import FrozenTrial

from contract import trial_attrs as attrs
from contract.confirm import Confirmed, pick_confirmed
from contract.confirm import summarize as summarize_confirmed
from contract.pareto import Pick, front_trials, pick_trial
from contract.study_spec import StudySpec
import storage
from storage.optuna_internals import trial_id
from storage.summaries import StudyHead, open_reader
from storage.trial_reader import load_trials

BEST_N = 10  # trials in the per-class IoU section
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
    return ReportData(
        head=head,
        spec=spec,
        masked_url=storage.mask_url(url),
        trials=trials,
        top=top,
        best=best,
        preview_png=preview,
        preview_note=note,
        now=utc_now(),
        pick=pick,
        front=front,
        confirmed=summarize_confirmed(confirmations),
    )


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


__all__ = ["BEST_N", "ReportData", "best_first", "read_report"]
