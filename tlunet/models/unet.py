"""The plain U-Net (Ronneberger et al. 2015), as Cheng & Lam 2021 used it for X-Unet."""

import keras

from tlunet.models.blocks import conv_block, decoder_stage, layer_class, segmentation_head


def build_unet(input_shape, classes=1, *, activation="auto", filters=(64, 128, 256, 512, 1024),
               name="unet"):
    """Builds the plain U-Net: two 3x3 conv + ReLU per level, no batch norm, 2x2 max-pool,
    2x2 stride-2 transposed conv up, 1x1 head. 2D for (H, W, C) inputs, 3D for (D, H, W, C).

    Args:
        input_shape: (H, W, C) or (D, H, W, C); spatial sizes divisible by 2**(len(filters) - 1).
        classes: output channels; 1 -> sigmoid, more -> softmax (see `activation`).
        activation: "auto", a Keras activation name, or None/"logits" for logits.
        filters: channels per level, the last one being the bottleneck.
        name: model name.

    Returns:
        A functional `keras.Model` with layer groups `encoder_block{i}`, `bottleneck`,
        `decoder_stage{i}` (0 = deepest) and `head`.
    """
    spatial_dims = len(input_shape) - 1
    inputs = keras.Input(shape=input_shape, name="image")
    x, skips = inputs, []
    for i, f in enumerate(filters[:-1], start=1):
        x = conv_block(x, f, name=f"encoder_block{i}", spatial_dims=spatial_dims)
        skips.append(x)
        x = layer_class("max_pool", spatial_dims)(2, name=f"encoder_block{i}_pool")(x)
    x = conv_block(x, filters[-1], name="bottleneck", spatial_dims=spatial_dims)
    for i, (f, skip) in enumerate(zip(reversed(filters[:-1]), reversed(skips))):
        x = decoder_stage(x, skip, f, name=f"decoder_stage{i}", spatial_dims=spatial_dims,
                          upsample="transpose")
    outputs = segmentation_head(x, classes, activation=activation, kernel_size=1,
                                spatial_dims=spatial_dims)
    return keras.Model(inputs, outputs, name=name)
