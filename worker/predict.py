"""``worker predict``: masks for a set of images from one saved model or an ensemble.

What it promises, and where each promise is kept:

- **The trial's own scoring.** With flip TTA the four flips go through
  :func:`worker.training.batches.flip_tta`, the function trials are scored with; whether a model
  uses it comes from the record inside its ``.keras`` file (:mod:`worker.training.saved`) unless
  ``--tta/--no-tta`` says otherwise. A labelled set is scored by
  :func:`worker.training.metrics.score`, the function that scores a trial's validation split, on
  the set's images without the repeated-mask "aliens" (training never sees them either).
- **Streaming.** The images are read from the ``.npz`` a batch at a time
  (:mod:`contract.npz_stream`) and ``--probabilities`` are written as they are computed, so
  memory holds one batch of probabilities, not the set's: what grows with N is the uint8 masks
  (8 KiB per image; and the true masks of a labelled set).
- **Nothing half-written.** Every check that can fail on the inputs runs before the first image
  is predicted; the ``.npz`` is written through a temporary file (:mod:`contract.atomic`), and
  the PNGs only after it is in place.

Each batch is padded to ``--batch`` images, so the model runs on one input shape only (one trace
or compile, and the same kernels for every batch); the padding's outputs are dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import contextlib
import dataclasses
from pathlib import Path
import time
from typing import TYPE_CHECKING

import numpy as np

from contract.aliens import alien_mask_flags
from contract.atomic import replacing, writable_problem
from contract.data_format import IMAGE_SHAPE, NUM_CLASSES, DataError, normalise
from contract.errors import TunerError
from contract.npz_stream import ArrayReader, NpzWriter, open_array
from worker.predict_terminal import ProgressBar

if TYPE_CHECKING:
    import keras

    from worker.training.metrics import Score
    from worker.training.saved import ModelInfo

#: The sets of the challenge file ``--set`` can name.
SETS = ("test_set", "training_set")
DEFAULT_SET = "test_set"
#: Images per forward pass (and per read from the file).
DEFAULT_BATCH = 64
#: Up to this many images get one PNG each; a larger set gets one contact sheet of the first ones.
PNG_EACH_MAX = 64
CONTACT_SHEET = "contact_sheet.png"


class PredictError(TunerError, ValueError):
    """Inputs ``worker predict`` cannot use; one line for the user."""


@dataclasses.dataclass(frozen=True)
class Summary:
    """What one prediction run did."""

    n_images: int
    seconds: float
    tta: tuple[bool, ...]  # per model
    score: Score | None  # labelled sets only
    scored_images: int  # images scored (aliens left out)
    pngs: tuple[Path, ...]


def predict_file(
    models: Sequence[str | Path],
    data: str | Path,
    output: str | Path,
    *,
    set_name: str = DEFAULT_SET,
    tta: bool | None = None,
    batch: int = DEFAULT_BATCH,
    probabilities: bool = False,
    png_dir: str | Path | None = None,
    gpu: int | None = None,
    progress: bool = False,
    say: Callable[[str], None] = print,
) -> Summary:
    """Predict ``set_name`` of ``data`` with the mean softmax of ``models``; write ``output``.

    ``output`` gets ``masks`` (N, 64, 128) uint8 in the set's order, and with ``probabilities``
    the ensemble's mean probabilities (N, 64, 128, 5) float16. ``tta`` overrides each model's
    recorded setting. ``gpu`` pins a GPU as ``worker train --gpu`` does. ``progress`` shows a
    bar on a terminal (stderr).

    Raises:
        PredictError, ModelFileError, DataError: an unusable input (nothing is written).
    """
    from worker.training.saved import read_info

    models = [Path(path) for path in models]
    data, output = Path(data), Path(output)
    png_dir = None if png_dir is None else Path(png_dir)
    _check_outputs(output, png_dir)
    _check_options(set_name, batch)
    infos = [read_info(path) for path in models]  # before TensorFlow: a wrong file fails at once
    use_tta = tuple(tta if tta is not None else bool(info.tta) for info in infos)
    with open_array(data, set_name) as reader:
        labelled = _check_set(reader, set_name)
        from worker.training.device import configure

        configure(gpu, mixed_precision="off")  # before the first TensorFlow op; models keep their dtypes
        loaded = _load_models(models)
        if tta is None:
            _note_unrecorded_tta(models, infos, say)
        return _run(
            loaded,
            use_tta,
            reader,
            labelled,
            output,
            batch=batch,
            probabilities=probabilities,
            png_dir=png_dir,
            progress=progress,
            say=say,
        )


def _check_options(set_name: str, batch: int) -> None:
    if set_name not in SETS:
        raise PredictError(f"--set {set_name}: use one of {', '.join(SETS)}")
    if batch < 1:
        raise PredictError(f"--batch {batch}: must be >= 1")


def _note_unrecorded_tta(models: Sequence[Path], infos: Sequence[ModelInfo], say: Callable[[str], None]) -> None:
    """Models saved before the TTA setting was recorded predict without it: say so."""
    for path, info in zip(models, infos, strict=False):
        if info.tta is None:
            say(
                f"note: {path} records no TTA setting (saved by an older version): predicting "
                "without flip TTA; --tta turns it on"
            )


def _check_outputs(output: Path, png_dir: Path | None) -> None:
    problem = writable_problem(output)
    if problem:
        raise PredictError(f"-o {output}: {problem}")
    if output.suffix != ".npz":
        raise PredictError(f"-o {output}: the predictions are an .npz file; name it *.npz")
    if png_dir is not None:
        if png_dir.exists() and not png_dir.is_dir():
            raise PredictError(f"--png {png_dir}: not a directory")
        problem = writable_problem(png_dir / CONTACT_SHEET)
        if problem:
            raise PredictError(f"--png {png_dir}: {problem}")


def _check_set(reader: ArrayReader, set_name: str) -> bool:
    """Whether the set is labelled; refuses a shape that is not the challenge's, or no images."""
    shape = reader.shape
    if len(shape) == 4 and shape[1] == 2:
        labelled, image_shape = True, shape[2:]
    elif len(shape) == 3:
        labelled, image_shape = False, shape[1:]
    else:
        raise PredictError(
            f"{reader.path}: '{set_name}' has shape {shape}; expected (N, {IMAGE_SHAPE[0]}, "
            f"{IMAGE_SHAPE[1]}) images or (N, 2, {IMAGE_SHAPE[0]}, {IMAGE_SHAPE[1]}) "
            "image and mask pairs"
        )
    if tuple(image_shape) != IMAGE_SHAPE:
        raise PredictError(
            f"{reader.path}: '{set_name}' images are {image_shape[0]}x{image_shape[1]}; "
            f"the models take {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]}"
        )
    if len(reader) == 0:
        raise PredictError(f"{reader.path}: '{set_name}' is empty: no image to predict")
    return labelled


def _load_models(paths: Sequence[Path]) -> list[keras.Model]:
    from worker.training.saved import load_model

    expected_in = (None, *IMAGE_SHAPE, 1)
    expected_out = (None, *IMAGE_SHAPE, NUM_CLASSES)
    models = []
    for path in paths:
        model = load_model(path)
        if isinstance(model.input_shape, list) or isinstance(model.output_shape, list):
            raise PredictError(
                f"--model {path}: it has several inputs or outputs; a segmentation "
                f"model takes one image and predicts one mask"
            )
        shape_in, shape_out = tuple(model.input_shape), tuple(model.output_shape)
        if shape_in != expected_in:
            raise PredictError(
                f"--model {path}: it takes inputs of shape {shape_in[1:]}; the images are {expected_in[1:]}"
            )
        if shape_out != expected_out:
            raise PredictError(
                f"--model {path}: it predicts {shape_out[1:]} (classes last); "
                f"expected {expected_out[1:]}, {NUM_CLASSES} classes"
            )
        models.append(model)
    return models


def _run(
    models: list[keras.Model],
    use_tta: tuple[bool, ...],
    reader: ArrayReader,
    labelled: bool,
    output: Path,
    *,
    batch: int,
    probabilities: bool,
    png_dir: Path | None,
    progress: bool,
    say: Callable[[str], None],
) -> Summary:
    n = len(reader)
    masks = np.empty((n, *IMAGE_SHAPE), dtype=np.uint8)
    truth = np.empty((n, *IMAGE_SHAPE), dtype=np.uint8) if labelled else None
    firsts: list[np.ndarray] = []  # the images the PNGs show
    ensemble = _ensemble([_forward(model, batch) for model in models], use_tta)
    started = time.perf_counter()
    try:
        with replacing(output, suffix=".npz") as tmp, NpzWriter(tmp) as writer, ProgressBar(n, progress) as advance:
            sink_cm = (
                writer.stream("probabilities", (n, *IMAGE_SHAPE, NUM_CLASSES), np.float16)
                if probabilities
                else contextlib.nullcontext()
            )
            with sink_cm as sink:
                start = 0
                for rows in reader.slices(batch):
                    images = _images(rows, labelled, reader, start)
                    if truth is not None:
                        truth[start : start + len(rows)] = _labels(rows, reader, start)
                    x = normalise(images)[..., None]
                    mean = ensemble(x)
                    masks[start : start + len(rows)] = np.argmax(mean, axis=-1)
                    if sink is not None:
                        sink.write(mean.astype(np.float16))
                    if len(firsts) * batch < PNG_EACH_MAX:
                        firsts.append(x[..., 0])
                    start += len(rows)
                    advance(len(rows))
            writer.array("masks", masks)
    except OSError as exc:
        raise PredictError(f"-o {output}: cannot write: {exc.strerror or exc}") from None
    seconds = time.perf_counter() - started
    scored, score = _score(truth, masks)
    pngs = _write_pngs(png_dir, np.concatenate(firsts)[:PNG_EACH_MAX], masks, truth, n) if png_dir else ()
    return Summary(n, seconds, use_tta, score, scored, tuple(pngs))


def _ensemble(
    forwards: list[Callable[[np.ndarray], np.ndarray]], use_tta: tuple[bool, ...]
) -> Callable[[np.ndarray], np.ndarray]:
    """``x -> mean probabilities`` of the models, each with flip TTA or not."""
    from worker.training.batches import flip_tta

    def mean(x: np.ndarray) -> np.ndarray:
        total = None
        for forward, tta in zip(forwards, use_tta, strict=False):
            probs = flip_tta(forward, x) if tta else forward(x)
            total = probs if total is None else total + probs
        return total if len(forwards) == 1 else total / np.float32(len(forwards))

    return mean


def _score(truth: np.ndarray | None, masks: np.ndarray) -> tuple[int, Score | None]:
    """(images scored, their score) of a labelled set, aliens left out as in training."""
    if truth is None:
        return 0, None
    from worker.training.metrics import score as score_of

    keep = ~alien_mask_flags(truth)
    scored = int(keep.sum())
    return scored, score_of(truth[keep], masks[keep]) if scored else None


def _forward(model: keras.Model, batch: int) -> Callable[[np.ndarray], np.ndarray]:
    """``x -> probabilities`` float32 for up to ``batch`` images, always run as a full batch."""

    def forward(x: np.ndarray) -> np.ndarray:
        k = len(x)
        if k < batch:
            x = np.concatenate([x, np.zeros((batch - k, *x.shape[1:]), dtype=x.dtype)])
        return np.asarray(model.predict_on_batch(x), dtype=np.float32)[:k]

    return forward


def _images(rows: np.ndarray, labelled: bool, reader: ArrayReader, start: int) -> np.ndarray:
    images = rows[:, 0] if labelled else rows
    _check_range(images, 255, reader, start, "pixel", whole=False)
    return images


def _labels(rows: np.ndarray, reader: ArrayReader, start: int) -> np.ndarray:
    labels = rows[:, 1]
    _check_range(labels, NUM_CLASSES - 1, reader, start, "label", whole=True)
    return labels.astype(np.uint8)


def _check_range(values: np.ndarray, top: int, reader: ArrayReader, start: int, what: str, *, whole: bool) -> None:
    """Refuse NaN, values outside 0..top and (``whole``) fractions, naming the first bad image."""
    bad = ~np.isfinite(values) | (values < 0) | (values > top)
    if whole:
        bad |= values != np.round(values)
    if bad.any():
        at = start + int(np.argmax(bad.reshape(len(values), -1).any(axis=1)))
        kind = "whole numbers " if whole else ""
        raise DataError(f"{reader.path}: '{reader.key}' {what} values must be {kind}in 0..{top} (first bad image {at})")


def _write_pngs(png_dir: Path, images: np.ndarray, masks: np.ndarray, truth: np.ndarray | None, n: int) -> list[Path]:
    """One PNG per image (image | [truth |] prediction) up to :data:`PNG_EACH_MAX` images; for
    more, one contact sheet of the first :data:`PNG_EACH_MAX`."""
    from worker.training.preview import PreviewSample, write_png

    def sample(index: slice) -> PreviewSample:
        return PreviewSample(
            images=images[index], truth=None if truth is None else truth[index], prediction=masks[index]
        )

    try:
        if n > PNG_EACH_MAX:
            return [write_png(sample(slice(0, PNG_EACH_MAX)), png_dir / CONTACT_SHEET)]
        width = len(str(n - 1))
        return [write_png(sample(slice(i, i + 1)), png_dir / f"{i:0{width}d}.png") for i in range(n)]
    except OSError as exc:
        raise PredictError(f"--png {png_dir}: cannot write: {exc.strerror or exc}") from None
