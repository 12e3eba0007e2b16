"""The one training configuration format.

``worker train --config`` reads it, the search space samples into it and ``tuner export``
writes it, so a winning trial can be retrained from its export without translation. Defaults are
the seed's configuration (Multipath UNet, ~6.1M parameters, focal gamma 0.5, AdamW 1e-3).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from pathlib import Path
from typing import Any

import yaml

from contract import textfile
from contract.errors import TunerError
from contract.field_types import check_field_types
from contract.textfile import short_repr, yaml_error_line  # noqa: F401 - re-exported

MODEL_NAMES = ("multipath", "unet")
CLASS_WEIGHT_SCHEMES = ("inverse_frequency", "sqrt_inverse_frequency", "uniform")


class ConfigFormat(str, enum.Enum):
    """The two file formats a training config is written and read in."""

    YAML = "yaml"
    JSON = "json"


class ConfigError(TunerError, ValueError):
    """A training configuration that cannot be used; the message is one line for the user."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs besides the data.

    Field names are the parameter names of the search space, so a sampled trial maps onto this
    class by name.
    """

    # Model.
    model: str = "multipath"
    base_filters: int = 32
    depth: int = 3
    conventional_filters: int = 256
    residual_filters: int = 32
    multiscale_filters: int = 256
    context_filters: int = 32
    batchnorm_momentum: float = 0.99
    # Loss.
    focal_gamma: float = 0.5
    class_weights: str = "inverse_frequency"
    background_weight: bool = False
    # Optimisation.
    learning_rate: float = 1e-3
    weight_decay: float = 1e-3
    batch_size: int = 128
    epochs: int = 200
    early_stopping_patience: int = 50
    reduce_lr_patience: int = 25
    reduce_lr_factor: float = 0.5
    min_learning_rate: float = 5e-6
    # Data and evaluation.
    augment_flips: bool = True
    tta: bool = False
    validation_fraction: float = 0.2
    max_images: int | None = None
    seed: int = 0
    # Speed. jit_compile=True turns XLA on and TensorFlow's op determinism off (Keras 3 does
    # not combine them), so such runs are seeded but not bit-for-bit repeatable.
    jit_compile: bool = False
    mixed_precision: str = "auto"
    # Retraining on all the data (``worker train --all-data``, which has no validation split to
    # stop early or lower the learning rate on): the learning rate of each epoch, as the trial
    # had it up to its best epoch; its length is the number of epochs. ``tuner export`` writes
    # it; other runs ignore it.
    lr_schedule: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        _check_schedule(self)
        check_field_types(self, ConfigError, skip=("lr_schedule",))  # lr_schedule: _check_schedule
        if self.model not in MODEL_NAMES:
            raise ConfigError(f"model must be one of {', '.join(MODEL_NAMES)}, got {short_repr(self.model)}")
        if self.class_weights not in CLASS_WEIGHT_SCHEMES:
            raise ConfigError(
                f"class_weights must be one of {', '.join(CLASS_WEIGHT_SCHEMES)}, got {short_repr(self.class_weights)}"
            )
        if self.mixed_precision not in ("auto", "on", "off"):
            raise ConfigError(f"mixed_precision must be auto, on or off, got {short_repr(self.mixed_precision)}")
        positive = (
            "base_filters",
            "depth",
            "conventional_filters",
            "residual_filters",
            "multiscale_filters",
            "context_filters",
            "batch_size",
            "epochs",
            "learning_rate",
            "min_learning_rate",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "focal_gamma", "early_stopping_patience", "reduce_lr_patience"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.batchnorm_momentum < 1.0:
            raise ConfigError(f"batchnorm_momentum must be in [0, 1), got {self.batchnorm_momentum}")
        if not 0.0 < self.reduce_lr_factor < 1.0:
            raise ConfigError(f"reduce_lr_factor must be in (0, 1), got {self.reduce_lr_factor}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ConfigError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")
        if self.depth > 5:
            raise ConfigError(f"depth must be <= 5 for 64x128 inputs, got {self.depth}")
        if self.max_images is not None and self.max_images < 4:
            raise ConfigError(f"max_images must be >= 4 or null, got {self.max_images}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a plain mapping; unknown keys are an error, not silently dropped."""
        if not isinstance(values, dict):
            raise ConfigError(f"a training config must be a mapping, got {type(values).__name__}")
        for key in values:
            if not isinstance(key, str):  # YAML reads `1:` or `null:` as non-string keys
                raise ConfigError(f"config keys must be field names (strings), got {short_repr(key)}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(key[:40] for key in unknown[:8])}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        if self.lr_schedule is not None:  # YAML and JSON write lists, not tuples
            values["lr_schedule"] = list(self.lr_schedule)
        return values

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a ``.yaml``/``.yml`` or ``.json`` file."""
        path = Path(path)
        values = textfile.load_or_raise(path, what="config", error=ConfigError, json_format=path.suffix == ".json")
        try:
            return cls.from_dict(values or {})
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None  # name the file, as the search space does

    def dumps(self, fmt: str = "yaml") -> str:
        """Serialise as ``yaml`` or ``json`` text that :meth:`load` reads back."""
        if fmt == "json":
            return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"
        if fmt == "yaml":
            return yaml.safe_dump(self.to_dict(), sort_keys=False)
        raise ConfigError(f"unknown format {fmt!r}; use json or yaml")


#: Longest ``lr_schedule`` (epochs) a config may hold.
MAX_SCHEDULE_EPOCHS = 100_000


def _check_schedule(config: TrainConfig) -> None:
    """``lr_schedule``: null, or a non-empty list of positive finite learning rates (kept as a
    tuple, so the frozen config stays hashable)."""
    value = config.lr_schedule
    if value is None:
        return
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(
            f"lr_schedule must be a non-empty list of learning rates (one per epoch) or null, got {short_repr(value)}"
        )
    if len(value) > MAX_SCHEDULE_EPOCHS:
        raise ConfigError(f"lr_schedule has {len(value)} epochs; at most {MAX_SCHEDULE_EPOCHS}")
    for epoch, rate in enumerate(value, start=1):
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
            raise ConfigError(
                f"lr_schedule epoch {epoch}: a learning rate must be a positive number, got {short_repr(rate)}"
            )
    object.__setattr__(config, "lr_schedule", tuple(float(rate) for rate in value))
