"""A read-only Optuna storage over trials already in memory.

``optuna.visualization`` and ``optuna.importance`` take a :class:`optuna.Study`. Copying 5,000
trials into an ``InMemoryStorage`` with ``add_trials`` validates and deep-copies each one (several
seconds); this storage serves the :class:`FrozenTrial` objects read by
:func:`storage.trial_reader.load_trials` as they are, so a report can hand Optuna's plotting
functions a study at no cost. Every write raises: a snapshot is not the study.

``get_all_trials`` never copies, even when asked to (``plot_optimization_history`` asks, and deep
copies of 5,000 trials cost seconds): readers get the snapshot's own objects and must not change
them, which Optuna's plotting and importance functions do not.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from typing import Any, NoReturn

import optuna
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState

from storage import optuna_internals

_STUDY_ID = 0


class SnapshotStorage(BaseStorage):
    """One study, its directions, user attributes and the given trials; nothing can change."""

    def __init__(
        self,
        study_name: str,
        directions: Sequence[StudyDirection],
        trials: Sequence[FrozenTrial],
        user_attrs: dict[str, Any] | None = None,
    ) -> None:
        self._name = study_name
        self._directions = list(directions)
        self._trials = sorted(trials, key=lambda t: t.number)
        self._by_id = {optuna_internals.trial_id(t): t for t in self._trials}
        self._user_attrs = dict(user_attrs or {})

    def study(self) -> optuna.Study:
        """A :class:`optuna.Study` reading this snapshot."""
        return optuna.Study(study_name=self._name, storage=self)

    # -- reads ------------------------------------------------------------------------------

    def get_study_id_from_name(self, study_name: str) -> int:
        if study_name != self._name:
            raise KeyError(study_name)
        return _STUDY_ID

    def get_study_name_from_id(self, study_id: int) -> str:
        self._check(study_id)
        return self._name

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        self._check(study_id)
        return list(self._directions)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        self._check(study_id)
        return dict(self._user_attrs)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        self._check(study_id)
        return {}

    def get_all_studies(self) -> list[FrozenStudy]:
        return [
            FrozenStudy(
                study_name=self._name,
                direction=None,
                directions=self._directions,
                user_attrs=dict(self._user_attrs),
                system_attrs={},
                study_id=_STUDY_ID,
            )
        ]

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        self._check(study_id)
        for trial in self._trials:
            if trial.number == trial_number:
                return optuna_internals.trial_id(trial)
        raise KeyError(trial_number)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._by_id[trial_id]

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        self._check(study_id)
        return list(self._trials) if states is None else [t for t in self._trials if t.state in states]

    def _check(self, study_id: int) -> None:
        if study_id != _STUDY_ID:
            raise KeyError(study_id)

    # -- writes: none -----------------------------------------------------------------------

    def _read_only(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError("a study snapshot is read-only")

    create_new_study = _read_only  # type: ignore[assignment]
    delete_study = _read_only  # type: ignore[assignment]
    set_study_user_attr = _read_only  # type: ignore[assignment]
    set_study_system_attr = _read_only  # type: ignore[assignment]
    create_new_trial = _read_only  # type: ignore[assignment]
    set_trial_param = _read_only  # type: ignore[assignment]
    set_trial_state_values = _read_only  # type: ignore[assignment]
    set_trial_intermediate_value = _read_only  # type: ignore[assignment]
    set_trial_user_attr = _read_only  # type: ignore[assignment]
    set_trial_system_attr = _read_only  # type: ignore[assignment]
