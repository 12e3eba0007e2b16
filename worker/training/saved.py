"""Saved models: write a ``.keras`` file with what it was trained as, and load it back anywhere.

Three commands write models: ``worker train --save``, ``worker run --artifact-dir`` (the upload
of each new best trial) and ``tuner export --model`` (a download of that upload). All three files
come from :func:`save_model`, which adds one member, ``mars_tuner.json``, to the Keras zip: the
training config (whether the trial scored with flip TTA among it) and whether the model has a
validation score at all (a model retrained on all data has none). Keras ignores members it does
not know, so the file stays an ordinary ``.keras`` file; files written before this member existed
load as well and simply record nothing (:class:`ModelInfo` fields are then ``None``).

:func:`load_model` is the one documented call that loads any of them, on the TensorFlow and the
JAX backend alike (``.keras`` files are backend-neutral: a file saved on one predicts on the
other). It loads for inference: the optimizer and loss are not restored (``compile=False``), so
no custom loss class has to be importable and a half-trained optimizer state costs nothing.

:func:`read_info` needs only the zip (no Keras): ``worker predict`` checks its ``--model`` files
before importing TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any
import zipfile

from contract.atomic import replacing
from contract.errors import TunerError

if TYPE_CHECKING:
    import keras

#: The member this project adds to the ``.keras`` zip.
INFO_MEMBER = "mars_tuner.json"
INFO_FORMAT = 1
#: Members every ``.keras`` file has (Keras 3's zip format).
KERAS_MEMBERS = ("config.json", "model.weights.h5")


class ModelFileError(TunerError, ValueError):
    """A ``--model`` path that is not a loadable Keras model; one line for the user."""


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a saved model records about its training (``None``: the file predates the record).

    ``config`` is the :class:`contract.config.TrainConfig` dict it trained with; ``all_data``
    is true for a model retrained on training + validation images (``worker train --all-data``),
    which has no validation score; ``validation_miou`` is the score of the others.
    """

    config: dict[str, Any] | None = None
    all_data: bool | None = None
    validation_miou: float | None = None

    @property
    def tta(self) -> bool | None:
        """Whether its trial was scored with flip test-time augmentation."""
        if self.config is None or "tta" not in self.config:
            return None
        return bool(self.config["tta"])

    def to_json(self) -> str:
        return json.dumps({"format": INFO_FORMAT, **dataclasses.asdict(self)}, indent=2) + "\n"


def save_model(model: keras.Model, path: str | Path, info: ModelInfo | None = None) -> Path:
    """Save as ``.keras`` with ``info`` inside, through a temporary file, then rename.

    ``os.replace`` is atomic on one filesystem, so a crash mid-save leaves either the old file
    or none, never half a zip that fails later on load.
    """
    path = Path(path)
    if path.suffix != ".keras":
        path = path.with_name(path.name + ".keras")
    with replacing(path, suffix=".keras") as tmp:
        model.save(tmp)
        if info is not None:
            with zipfile.ZipFile(tmp, mode="a") as archive:
                archive.writestr(INFO_MEMBER, info.to_json())
    return path


def read_info(path: str | Path) -> ModelInfo:
    """The record inside a ``.keras`` file (empty for older files), after checking it is one.

    Raises:
        ModelFileError: missing, not a file, not a zip, not a Keras archive, unreadable record.
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelFileError(f"{path} is not a file")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            missing = [m for m in KERAS_MEMBERS if m not in names]
            if missing:
                raise ModelFileError(f"{path} is not a Keras model file (no {missing[0]} inside)")
            raw = archive.read(INFO_MEMBER) if INFO_MEMBER in names else None
    except (zipfile.BadZipFile, OSError) as exc:
        reason = "not a zip" if isinstance(exc, zipfile.BadZipFile) else (exc.strerror or type(exc).__name__)
        raise ModelFileError(f"{path} is not a Keras model file ({reason})") from None
    if raw is None:
        return ModelInfo()
    try:
        values = json.loads(raw)
        known = {f.name for f in dataclasses.fields(ModelInfo)}
        return ModelInfo(**{k: v for k, v in values.items() if k in known})
    except (ValueError, TypeError, AttributeError):
        raise ModelFileError(f"{path}: its {INFO_MEMBER} is not readable") from None


def load_model(path: str | Path) -> keras.Model:
    """Load a model saved by ``worker train --save``, ``worker run --artifact-dir`` or
    ``tuner export --model``, for inference, on whichever Keras backend is active.

    Raises:
        ModelFileError: not a Keras model file, or Keras cannot rebuild it (one line).
    """
    read_info(path)  # the cheap checks first, with their clear messages
    from worker.training.backend import name as backend_name

    backend_name()  # imports Keras with its native start-up chatter kept off the terminal
    import keras

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001 - Keras raises anything from a bad archive
        text = str(exc).strip().splitlines()
        raise ModelFileError(
            f"{path}: Keras cannot load it: {type(exc).__name__}: {text[0][:200] if text else ''}"
        ) from None
