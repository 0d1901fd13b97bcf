"""Dimension-generic building blocks shared by the 2D and 3D U-Nets.

Every block is a free function that takes a tensor and a `name`; all its layers carry that name as
a prefix, because fine-tuning strategies select layers by these prefixes.
"""

from keras import layers

_LAYERS = {
    2: {
        "conv": layers.Conv2D,
        "conv_transpose": layers.Conv2DTranspose,
        "max_pool": layers.MaxPooling2D,
        "upsample": layers.UpSampling2D,
    },
    3: {
        "conv": layers.Conv3D,
        "conv_transpose": layers.Conv3DTranspose,
        "max_pool": layers.MaxPooling3D,
        "upsample": layers.UpSampling3D,
    },
}
UPSAMPLE_MODES = ("transpose", "nearest")


def layer_class(kind, spatial_dims):
    """Returns the Keras layer class of `kind` ("conv", "max_pool", ...) for 2 or 3 spatial dims."""
    if spatial_dims not in _LAYERS:
        raise ValueError(f"`spatial_dims` must be 2 or 3. Received: spatial_dims={spatial_dims}")
    return _LAYERS[spatial_dims][kind]


def conv_block(x, filters, *, name, spatial_dims=2, n_convs=2, kernel_size=3, batchnorm=False):
    """`n_convs` x [conv -> (BN) -> ReLU]; with BN the conv has no bias (BN's beta replaces it).

    Args:
        x: input tensor.
        filters: output channels of every conv.
        name: prefix of all layer names; layers are `{name}_conv{i}`, `{name}_bn{i}`, `{name}_relu{i}`.
        spatial_dims: 2 or 3.
        n_convs: number of convolutions.
        kernel_size: convolution kernel size.
        batchnorm: insert BatchNormalization between conv and ReLU.

    Returns:
        The output tensor.
    """
    conv = layer_class("conv", spatial_dims)
    for i in range(1, n_convs + 1):
        if batchnorm:
            x = conv(filters, kernel_size, padding="same", use_bias=False,
                     kernel_initializer="he_normal", name=f"{name}_conv{i}")(x)
            x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
            x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
        else:
            x = conv(filters, kernel_size, padding="same", activation="relu",
                     kernel_initializer="he_normal", name=f"{name}_conv{i}")(x)
    return x


def decoder_stage(x, skip, filters, *, name, spatial_dims=2, upsample="transpose", batchnorm=False,
                  factor=2):
    """One U-Net decoder stage: upsampling by `factor` -> concat skip (if any) -> `conv_block`.

    Args:
        x: the deeper feature map.
        skip: the encoder feature map at the target resolution, or None.
        filters: channels of the stage (also of the transposed conv when `upsample="transpose"`).
        name: layer-name prefix, e.g. "decoder_stage0".
        spatial_dims: 2 or 3.
        upsample: "transpose" (learned 2x2 transposed conv, stride 2) or "nearest" (x2 repeat).
        batchnorm: BN inside the conv block.
        factor: upsampling factor, an int or one per spatial axis (e.g. (1, 2, 2) for volumes
            whose depth was not downsampled).

    Returns:
        The output tensor.
    """
    if upsample == "transpose":
        x = layer_class("conv_transpose", spatial_dims)(
            filters, factor, strides=factor, padding="same", kernel_initializer="he_normal",
            name=f"{name}_upsample")(x)
    elif upsample == "nearest":
        x = layer_class("upsample", spatial_dims)(factor, name=f"{name}_upsample")(x)
    else:
        raise ValueError(f"`upsample` must be one of {UPSAMPLE_MODES}. Received: upsample={upsample!r}")
    if skip is not None:
        x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    return conv_block(x, filters, name=name, spatial_dims=spatial_dims, batchnorm=batchnorm)


def resolve_activation(classes, activation):
    """"auto" -> sigmoid for one class, softmax for several; None/"logits" -> linear."""
    if activation == "auto":
        return "sigmoid" if classes == 1 else "softmax"
    if activation in (None, "logits", "linear"):
        return "linear"
    return activation


def segmentation_head(x, classes, *, activation="auto", kernel_size=1, spatial_dims=2):
    """`head_conv` to `classes` channels, then `head_activation` computed in float32.

    The activation is a separate float32 layer so the output stays float32 under mixed precision.
    """
    x = layer_class("conv", spatial_dims)(classes, kernel_size, padding="same", name="head_conv")(x)
    return layers.Activation(resolve_activation(classes, activation), dtype="float32",
                             name="head_activation")(x)

