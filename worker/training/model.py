"""The seed's Multipath UNet and a plain UNet baseline (imports Keras).

Both are built from the small block functions below, in the style of the keras.io examples:
every block takes a tensor and a ``name`` prefix and returns a tensor, so layer names say where
a layer sits (``enc1_conv1``, ``bottleneck_residual_add``, ``dec2_up``, ...).

Multipath UNet (``../shared/REFERENCE.md``, "The seed model"); seed widths in brackets::

    input (64, 128, 1)
    encoder, level i = 0..depth-1: double conv (base * 2**i) [32, 64, 128] -> skip -> 2x2 max-pool
    bottleneck, four parallel paths from the last pooled map (8 x 16 x 128 for the seed):
      conventional  double conv                                          [256]
      residual      conv-BN-ReLU-conv-BN + 1x1 conv shortcut, add, ReLU    [32]
      multiscale    3x3 convs with dilation 1, 2, 4 (BN + ReLU), summed   [256]
      context       GAP -> Dense -> reshape -> 1x1 conv -> broadcast       [32]
      -> concatenate                                                      [576]
    fusion: 3x3 conv (as wide as the concatenation) -> squeeze-and-excitation
            -> residual add with the concatenation
    decoder, level i = depth-1..0: 2x2 transposed conv, stride 2 (base * 2**i)
            -> concatenate skip i -> double conv (base * 2**i)           [128, 64, 32]
    1x1 conv to ``num_classes`` -> softmax (float32)

The seed configuration has 6,067,049 parameters (6,061,417 trainable); the plain UNet at the
same widths has 1,929,381. The last activation (``probabilities``) is pinned to float32, so
under a ``mixed_float16`` policy the model still outputs float32 probabilities and the loss's
``log`` stays safe.

A "conv" here is Conv2D without bias followed by BatchNorm and ReLU: the bias would be
cancelled by BatchNorm's mean subtraction, so it is left out (the seed's count differs from this
by a few thousand biases at most).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import keras
from keras import layers

if TYPE_CHECKING:  # pragma: no cover
    from contract.config import TrainConfig

SE_RATIO = 16
DILATIONS = (1, 2, 4)


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------


def conv_block(x, filters: int, name: str, *, kernel_size: int = 3, dilation_rate: int = 1):
    """Conv2D (same padding, no bias) -> BatchNorm -> ReLU."""
    x = layers.Conv2D(
        filters, kernel_size, padding="same", dilation_rate=dilation_rate, use_bias=False, name=f"{name}_conv"
    )(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def double_conv_block(x, filters: int, name: str):
    """Two :func:`conv_block` of ``filters`` each: the UNet's basic unit."""
    x = conv_block(x, filters, f"{name}_1")
    return conv_block(x, filters, f"{name}_2")


def encoder_block(x, filters: int, name: str):
    """Double conv, then 2x2 max-pool. Returns ``(skip, pooled)``."""
    skip = double_conv_block(x, filters, name)
    pooled = layers.MaxPooling2D(2, name=f"{name}_pool")(skip)
    return skip, pooled


def decoder_block(x, skip, filters: int, name: str):
    """2x2 transposed conv with stride 2 -> concatenate ``skip`` -> double conv."""
    x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"{name}_up")(x)
    x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    return double_conv_block(x, filters, f"{name}_conv")


def conventional_path(x, filters: int, name: str):
    """The plain UNet bottleneck: a double conv."""
    return double_conv_block(x, filters, name)


def residual_path(x, filters: int, name: str):
    """conv-BN-ReLU-conv-BN plus a 1x1 conv shortcut, added, then ReLU."""
    y = conv_block(x, filters, f"{name}_1")
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
    y = layers.BatchNormalization(name=f"{name}_2_bn")(y)
    shortcut = layers.Conv2D(filters, 1, padding="same", name=f"{name}_shortcut")(x)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_relu")(y)


def multiscale_path(x, filters: int, name: str, dilations: Sequence[int] = DILATIONS):
    """Parallel 3x3 convs (BN + ReLU) with the given dilation rates, summed."""
    branches = [conv_block(x, filters, f"{name}_d{d}", dilation_rate=d) for d in dilations]
    return layers.Add(name=f"{name}_sum")(branches)


def global_context_path(x, filters: int, name: str):
    """Global average pool -> Dense -> reshape to 1x1 -> 1x1 conv -> broadcast to x's HxW.

    The broadcast is a nearest-neighbour ``UpSampling2D`` of the 1x1 map by (H, W): an exact
    copy to every position, and (unlike a ``Lambda``) it survives ``.keras`` save/load.
    """
    height, width = int(x.shape[1]), int(x.shape[2])
    y = layers.GlobalAveragePooling2D(name=f"{name}_gap")(x)
    y = layers.Dense(filters, activation="relu", name=f"{name}_dense")(y)
    y = layers.Reshape((1, 1, filters), name=f"{name}_reshape")(y)
    y = layers.Conv2D(filters, 1, activation="relu", name=f"{name}_conv")(y)
    return layers.UpSampling2D(size=(height, width), name=f"{name}_broadcast")(y)


def squeeze_excite(x, name: str, ratio: int = SE_RATIO):
    """Squeeze-and-excitation: GAP -> Dense(c // ratio, relu) -> Dense(c, sigmoid) -> scale."""
    channels = int(x.shape[-1])
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_gap")(x)
    s = layers.Dense(max(1, channels // ratio), activation="relu", name=f"{name}_reduce")(s)
    s = layers.Dense(channels, activation="sigmoid", name=f"{name}_expand")(s)
    return layers.Multiply(name=f"{name}_scale")([x, s])


def fusion_block(x, name: str):
    """3x3 conv as wide as ``x`` -> squeeze-and-excitation -> residual add with ``x``."""
    y = conv_block(x, int(x.shape[-1]), f"{name}_conv")
    y = squeeze_excite(y, f"{name}_se")
    return layers.Add(name=f"{name}_add")([y, x])


def segmentation_head(x, num_classes: int):
    """1x1 conv to class logits, then a float32 softmax (safe under mixed precision)."""
    x = layers.Conv2D(num_classes, 1, name="logits")(x)
    return layers.Activation("softmax", dtype="float32", name="probabilities")(x)


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def build_multipath_unet(
    *,
    input_shape: Sequence[int] = (64, 128, 1),
    num_classes: int = 5,
    base_filters: int = 32,
    depth: int = 3,
    conventional_filters: int = 256,
    residual_filters: int = 32,
    multiscale_filters: int = 256,
    context_filters: int = 32,
) -> keras.Model:
    """The seed's Multipath UNet (module docstring); defaults give the seed (6,067,049 params)."""
    _check(
        input_shape,
        depth,
        num_classes=num_classes,
        base_filters=base_filters,
        conventional_filters=conventional_filters,
        residual_filters=residual_filters,
        multiscale_filters=multiscale_filters,
        context_filters=context_filters,
    )
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x, skips = _encoder(inputs, base_filters, depth)

    paths = [
        conventional_path(x, conventional_filters, "bottleneck_conventional"),
        residual_path(x, residual_filters, "bottleneck_residual"),
        multiscale_path(x, multiscale_filters, "bottleneck_multiscale"),
        global_context_path(x, context_filters, "bottleneck_context"),
    ]
    x = layers.Concatenate(name="bottleneck_concat")(paths)
    x = fusion_block(x, "fusion")

    x = _decoder(x, skips, base_filters)
    outputs = segmentation_head(x, num_classes)
    return keras.Model(inputs, outputs, name="multipath_unet")


def build_unet(
    *,
    input_shape: Sequence[int] = (64, 128, 1),
    num_classes: int = 5,
    base_filters: int = 32,
    depth: int = 3,
) -> keras.Model:
    """Plain UNet baseline: same encoder/decoder, bottleneck a double conv of base * 2**depth."""
    _check(input_shape, depth, num_classes=num_classes, base_filters=base_filters)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x, skips = _encoder(inputs, base_filters, depth)
    x = conventional_path(x, base_filters * 2**depth, "bottleneck")
    x = _decoder(x, skips, base_filters)
    outputs = segmentation_head(x, num_classes)
    return keras.Model(inputs, outputs, name="unet")


def build_model(config: TrainConfig) -> keras.Model:
    """The model ``config.model`` names ("multipath" or "unet"), for 64x128x1 inputs, 5 classes.

    ``config.batchnorm_momentum`` is applied to every BatchNorm layer here rather than threaded
    through each block: it is a training setting, not part of the architecture.
    """
    model = _build_architecture(config)
    set_batchnorm_momentum(model, config.batchnorm_momentum)
    return model


def set_batchnorm_momentum(model: keras.Model, momentum: float) -> None:
    """Set the moving-statistics momentum of every BatchNorm layer (before training).

    Keras' 0.99 needs a few hundred steps before the moving statistics used at inference
    approach the batch statistics; a short run (a demo, an early Hyperband rung) on little data
    is then judged with stale statistics and scores near zero. 0.9 converges in tens of steps.
    """
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def _build_architecture(config: TrainConfig) -> keras.Model:
    if config.model == "multipath":
        return build_multipath_unet(
            base_filters=config.base_filters,
            depth=config.depth,
            conventional_filters=config.conventional_filters,
            residual_filters=config.residual_filters,
            multiscale_filters=config.multiscale_filters,
            context_filters=config.context_filters,
        )
    if config.model == "unet":
        return build_unet(base_filters=config.base_filters, depth=config.depth)
    raise ValueError(f"unknown model {config.model!r}; expected 'multipath' or 'unet'")


def _encoder(x, base_filters: int, depth: int):
    skips = []
    for level in range(depth):
        skip, x = encoder_block(x, base_filters * 2**level, f"enc{level + 1}")
        skips.append(skip)
    return x, skips


def _decoder(x, skips, base_filters: int):
    for level in reversed(range(len(skips))):
        x = decoder_block(x, skips[level], base_filters * 2**level, f"dec{level + 1}")
    return x


def _check(input_shape: Sequence[int], depth: int, **positive: int) -> None:
    """Reject shapes the encoder cannot pool ``depth`` times and non-positive widths."""
    for name, value in positive.items():
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if int(depth) < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    shape = tuple(input_shape)
    if len(shape) != 3 or any(d is None or int(d) < 1 for d in shape):
        raise ValueError(f"input_shape must be (height, width, channels), got {shape}")
    factor = 2**depth
    height, width = int(shape[0]), int(shape[1])
    if height % factor or width % factor:
        raise ValueError(
            f"input height and width must be divisible by 2**depth = {factor} "
            f"(depth {depth} pools {depth} times), got {height}x{width}"
        )
