"""What one trial's run produced (:class:`TrainResult`), as the trial loop stores it.

TensorFlow-free: the coordinator's readers and ``contract.trial_attrs.record_result`` read the
same fields (duck-typed).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from contract.trial_attrs import json_safe
from worker.training.progress import fmt


@dataclasses.dataclass
class TrainResult:
    """What one run produced; :meth:`to_dict` is what the trial loop stores.

    ``best_miou`` and ``per_class_iou`` come from re-evaluating the restored best model on the
    validation split (with flip TTA if the config asked for it). ``best_epoch`` is 0-based and
    is the epoch whose weights were restored. Each ``history`` row holds ``loss``, ``val_loss``,
    ``val_miou`` and ``lr``, the learning rate used *during* that epoch.
    """

    best_miou: float
    per_class_iou: dict[int, float]
    epochs_run: int
    best_epoch: int
    wall_time_s: float
    history: list[dict[str, float]]
    n_train: int
    n_val: int
    class_weights: list[float]
    device: dict[str, Any]
    # seconds per step (prepare_s, build_s, first_batch_s, fit_s, epoch_s, evaluate_s, save_s)
    # and whether the data split and the compiled model were reused from an earlier trial
    timings: dict[str, Any] = dataclasses.field(default_factory=dict)
    confusion_matrix: list[list[int]] | None = None  # [true][predicted] pixels, best model, validation
    n_params: int | None = None  # the model's parameter count, as keras count_params
    inference_ms_per_image: float | None = None  # measured only when asked (see Trainer.train)
    preview: Any = dataclasses.field(default=None, repr=False)  # worker.training.preview.PreviewSample

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: NaN/inf become ``None`` and the per-class keys become strings.

        String keys make a JSON round trip the identity (JSON would turn int keys into strings
        anyway), so a stored result compares equal to a freshly computed one.
        """
        values = dataclasses.asdict(self)
        values.pop("preview")  # arrays, uploaded as a PNG by the worker, not stored as JSON
        values["per_class_iou"] = {str(k): v for k, v in self.per_class_iou.items()}
        return json_safe(values)

    def summary(self, *, tta: bool) -> str:
        """The line a verbose run ends with: best epoch, score (``tta``: flip TTA), size, time."""
        latency = self.inference_ms_per_image
        return (
            f"best epoch {self.best_epoch + 1}: validation mIoU {fmt(self.best_miou)}"
            f"{' (flip TTA)' if tta else ''}; "
            + " ".join(f"c{c}={fmt(v)}" for c, v in self.per_class_iou.items())
            + f"; {self.n_params:,} params"
            + (f", {latency:.3g} ms/image" if latency is not None else "")
            + f"; {self.wall_time_s:.1f}s"
        )
