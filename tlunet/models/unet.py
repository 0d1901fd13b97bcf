"""Plain U-Nets: Ronneberger et al. 2015 (Cheng & Lam 2021's X-Unet), the 3D U-Net of Wang et al.
2020, and its hybrid-encoder variant (two encoders merged by selective fusion)."""

import keras

from tlunet.layers import SelectiveFusion
from tlunet.models.blocks import conv_block, decoder_stage, layer_class, segmentation_head


def _contracting_path(x, filters, spatial_dims, batchnorm):
    """encoder_block{i} (conv block + 2x max-pool) for filters[:-1], then the bottleneck block.
    Returns (skips shallow->deep, bottleneck output)."""
    skips = []
    for i, f in enumerate(filters[:-1], start=1):
        x = conv_block(x, f, name=f"encoder_block{i}", spatial_dims=spatial_dims, batchnorm=batchnorm)
        skips.append(x)
        x = layer_class("max_pool", spatial_dims)(2, name=f"encoder_block{i}_pool")(x)
    return skips, conv_block(x, filters[-1], name="bottleneck", spatial_dims=spatial_dims, batchnorm=batchnorm)


def _expanding_path(x, skips, filters, spatial_dims, batchnorm, classes, activation):
    for i, (f, skip) in enumerate(zip(reversed(filters[:-1]), reversed(skips))):
        x = decoder_stage(x, skip, f, name=f"decoder_stage{i}", spatial_dims=spatial_dims,
                          upsample="transpose", batchnorm=batchnorm)
    return segmentation_head(x, classes, activation=activation, kernel_size=1, spatial_dims=spatial_dims)


UNET_FILTERS = (64, 128, 256, 512, 1024)  # Ronneberger et al.; Cheng & Lam's X-Unet


def pooling_divisor(filters):
    """Input sizes a plain U-Net takes are multiples of this: one 2x pooling per level but the last."""
    return 2 ** (len(filters) - 1)


def build_unet(input_shape, classes=1, *, activation="auto", filters=UNET_FILTERS,
               batchnorm=False, name="unet"):
    """Builds the plain U-Net: two 3x3 convs + ReLU per level, 2x2 max-pool, 2x2 stride-2
    transposed conv up, 1x1 head. 2D for (H, W, C) inputs, 3D for (D, H, W, C).

    Args:
        input_shape: (H, W, C) or (D, H, W, C); spatial sizes divisible by 2**(len(filters) - 1).
        classes: output channels; 1 -> sigmoid, more -> softmax (see `activation`).
        activation: "auto", a Keras activation name, or None/"logits" for logits.
        filters: channels per level, the last one being the bottleneck.
        batchnorm: conv -> BN -> ReLU (convs without bias) instead of conv + ReLU.
        name: model name.

    Returns:
        A functional `keras.Model` with layer groups `encoder_block{i}`, `bottleneck`,
        `decoder_stage{i}` (0 = deepest) and `head`.
    """
    spatial_dims = len(input_shape) - 1
    inputs = keras.Input(shape=input_shape, name="image")
    skips, x = _contracting_path(inputs, filters, spatial_dims, batchnorm)
    outputs = _expanding_path(x, skips, filters, spatial_dims, batchnorm, classes, activation)
    return keras.Model(inputs, outputs, name=name)


UNET3D_FILTERS = (32, 64, 128, 256, 320)  # nnU-Net's 3D full-resolution widths (Wang et al. 2020)


def build_unet3d(input_shape, classes=1, *, activation="auto", filters=UNET3D_FILTERS, batchnorm=True):
    """The 3D U-Net of Wang et al. 2020 (nnU-Net-like widths 32-320, conv-BN-ReLU, max-pool,
    transposed-conv decoder): `build_unet` on (D, H, W, C) volumes. Groups as in `build_unet`;
    "encoder" selects every `encoder_block{i}`."""
    if len(input_shape) != 4:
        raise ValueError(f"unet3d takes (D, H, W, C) volumes. Received: input_shape={input_shape}")
    return build_unet(input_shape, classes, activation=activation, filters=filters, batchnorm=batchnorm,
                      name="unet3d")


def build_unet_encoder(input_shape, filters=UNET3D_FILTERS, batchnorm=True, name="encoder"):
    """The contracting path of `build_unet` as a nested model (outputs: skips, then bottleneck),
    with the same layer names, so a U-Net's encoder weights copy into it by name."""
    inputs = keras.Input(shape=input_shape, name="image")
    skips, x = _contracting_path(inputs, filters, len(input_shape) - 1, batchnorm)
    return keras.Model(inputs, [*skips, x], name=name)


def build_hybrid_unet(input_shape, classes=1, *, activation="auto", filters=UNET_FILTERS, batchnorm=True,
                      reduction=4, name="hybrid_unet"):
    """Wang et al. 2020's hybrid encoder, on images (H, W, C) or volumes (D, H, W, C): an
    `encoder_target` learnt on the target data and an `encoder_source` (initialised from a model
    pre-trained on the source lesions and adapted while training), merged at every level by a
    `SelectiveFusion` unit (`encoder_fusion{i}`, attention over the two branches per channel),
    then the usual decoder and head.

    Use `tlunet.transfer.build_transfer_model("hybrid", source)` to get it with the source weights.
    """
    spatial_dims = len(input_shape) - 1
    inputs = keras.Input(shape=input_shape, name="image")
    target = build_unet_encoder(input_shape, filters, batchnorm, name="encoder_target")(inputs)
    source = build_unet_encoder(input_shape, filters, batchnorm, name="encoder_source")(inputs)
    fused = [SelectiveFusion(reduction=reduction, name=f"encoder_fusion{i}")([t, s])
             for i, (t, s) in enumerate(zip(target, source), start=1)]
    outputs = _expanding_path(fused[-1], fused[:-1], filters, spatial_dims, batchnorm, classes, activation)
    return keras.Model(inputs, outputs, name=name)


def build_hybrid_unet3d(input_shape, classes=1, *, activation="auto", filters=UNET3D_FILTERS, batchnorm=True,
                        reduction=4):
    """`build_hybrid_unet` on (D, H, W, C) volumes with nnU-Net's 3D widths: the model of Wang et al.
    2020's paper."""
    if len(input_shape) != 4:
        raise ValueError(f"hybrid_unet3d takes (D, H, W, C) volumes. Received: input_shape={input_shape}")
    return build_hybrid_unet(input_shape, classes, activation=activation, filters=filters, batchnorm=batchnorm,
                             reduction=reduction, name="hybrid_unet3d")
