"""Uploading a trial's model (and its validation preview) when it is the study's best so far.

The trial's result is recorded before the upload, so a failed upload (disk full, a bad
``--artifact-dir``) is only a warning and leaves no partial file behind; the database going
away or the study being replaced meanwhile is not the upload's business and is raised on.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from contract import trial_attrs
from storage.retry import is_transient
from worker.study_link import StudyLink


class Uploader:
    """Puts new best models of one study into its artifact store (``worker run --artifact-dir``)."""

    def __init__(self, link: StudyLink, store: Any, artifact_dir: Path | None) -> None:
        self.link, self.store, self.artifact_dir = link, store, artifact_dir

    def upload_if_best(self, trial: optuna.Trial, value: float | list[float], path: Path, preview: Any = None) -> None:
        """Upload the model (and its validation preview) if it is the study's best so far.

        With two objectives "best" means on the Pareto front so far (no complete trial beats it
        on both), so whichever trial ``tuner export --pick`` chooses later has its model.
        A failed upload is only a warning: the trial's result is already recorded.
        """
        if not self._is_best(value):
            return
        if not self._upload_model(trial, path):
            return
        if preview is not None:  # validation images with truth and prediction, for `tuner report`
            self._upload_preview(trial, path, preview)

    def _is_best(self, value: float | list[float]) -> bool:
        study = self.link.study
        if isinstance(value, list):
            return not self.link.call(lambda: _dominated(study, value), "reading the Pareto front")
        try:
            best = self.link.call(lambda: study.best_value, "reading the best value")
        except ValueError:  # no completed trial yet
            best = -math.inf
        return value > best

    def _upload_model(self, trial: optuna.Trial, path: Path) -> bool:
        from optuna.artifacts import upload_artifact

        store = _CleanupStore(self.store)
        try:
            artifact_id = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
            self.link.call(lambda: trial.set_user_attr(trial_attrs.MODEL_ARTIFACT, artifact_id), "recording the model")
        except Exception as exc:  # noqa: BLE001 - the trial's result is worth more than its model file
            store.discard()
            if is_transient(exc) or self.link.replaced():
                raise
            reason = getattr(exc, "strerror", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
            self.link.say(
                f"warning: trial {trial.number}: model upload to {self.artifact_dir} failed "
                f"({reason}); the trial's result is kept, its model is not"
            )
            return False
        self.link.say(f"trial {trial.number}: new best, model uploaded as artifact {artifact_id}")
        return True

    def _upload_preview(self, trial: optuna.Trial, path: Path, preview: Any) -> None:
        from optuna.artifacts import upload_artifact

        from worker.training.preview import write_png

        store = _CleanupStore(self.store)
        try:
            png = write_png(preview, path.with_suffix(".png"))
            preview_id = upload_artifact(artifact_store=store, file_path=str(png), study_or_trial=trial)
            self.link.call(
                lambda: trial.set_user_attr(trial_attrs.PREVIEW_ARTIFACT, preview_id), "recording the preview"
            )
        except Exception as exc:  # noqa: BLE001 - a picture is worth less than the trial
            store.discard()
            if is_transient(exc) or self.link.replaced():
                raise
            self.link.say(f"warning: trial {trial.number}: preview upload failed ({type(exc).__name__})")


def _dominated(study: optuna.Study, values: list[float]) -> bool:
    """Whether a COMPLETE trial of ``study`` dominates ``values`` (mIoU, cost)."""
    from contract.pareto import Point, dominates, points_of

    new = Point(-1, values[0], values[1])
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return any(dominates(p, new) for p in points_of(done, study.directions))


class _CleanupStore:
    """An artifact store that removes what a failed upload left behind (a partial file)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._written: list[str] = []

    def open_reader(self, artifact_id: str) -> Any:
        return self._inner.open_reader(artifact_id)

    def write(self, artifact_id: str, content_body: Any) -> None:
        self._written.append(artifact_id)
        self._inner.write(artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self._inner.remove(artifact_id)

    def discard(self) -> None:
        for artifact_id in self._written:
            with contextlib.suppress(Exception):
                self._inner.remove(artifact_id)
        self._written.clear()


__all__ = ["Uploader"]
