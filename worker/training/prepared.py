"""The data step of a run: subsample, split into training and validation, class weights.

Split *before* any augmentation, so no flipped copy of a validation image is ever trained on,
and compute class weights from the training split's masks only. A worker's
:class:`worker.training.train.Trainer` keeps one :class:`PreparedData` per (data, max_images,
validation fraction, seed). numpy only.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from contract.config import TrainConfig
from contract.splitting import split, subset_indices

if TYPE_CHECKING:
    from contract.data import MarsData


@dataclasses.dataclass
class PreparedData:
    """The split arrays of one (data, max_images, validation fraction, seed)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    n_images: int
    _weights: dict[tuple, np.ndarray] = dataclasses.field(default_factory=dict)
    _flipped: dict[bool, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)

    @classmethod
    def make(cls, data: MarsData, config: TrainConfig) -> PreparedData:
        images, masks, groups = subsample(
            np.asarray(data.images), np.asarray(data.masks), data.groups, config.max_images, config.seed
        )
        train_idx, val_idx = split(masks, config.validation_fraction, config.seed, groups)
        return cls(images[train_idx], masks[train_idx], images[val_idx], masks[val_idx], len(images))

    @property
    def n_train(self) -> int:
        return len(self.x_train)

    @property
    def n_val(self) -> int:
        return len(self.x_val)

    def class_weights(self, config: TrainConfig) -> np.ndarray:
        """From the training split's masks only (never validation)."""
        from worker.training.losses import class_weights_from_masks

        key = (config.class_weights, config.background_weight)
        if key not in self._weights:
            self._weights[key] = np.asarray(
                class_weights_from_masks(
                    self.y_train, scheme=config.class_weights, background_weight=config.background_weight
                ),
                dtype=np.float64,
            )
        return self._weights[key]

    def flipped(self, augment_flips: bool) -> tuple[np.ndarray, np.ndarray]:
        """The numpy training set (x4 with flips), made once: the JAX backend's data path."""
        from worker.training.batches import flipped

        if augment_flips not in self._flipped:
            self._flipped[augment_flips] = flipped(self.x_train, self.y_train, augment_flips)
        return self._flipped[augment_flips]


def subsample(
    images: np.ndarray,
    masks: np.ndarray,
    groups: np.ndarray | None,
    max_images: int | None,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A seeded subset of ``max_images`` images (kept in file order), or everything.

    ``load_npz(max_images=..., seed=...)`` subsamples at load time; this covers data loaded in
    full and picks the same subset (stratified on big rock, same generator), so both routes
    train on the same images. The group ids (if any) follow their images.
    """
    if max_images is None or len(images) <= max_images:
        return images, masks, groups
    keep = subset_indices(masks, max_images, seed)
    return images[keep], masks[keep], None if groups is None else groups[keep]
