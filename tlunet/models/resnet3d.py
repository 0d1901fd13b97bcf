"""3D U-Net with a ResNet-18 3D encoder in torchvision's r3d_18 layout (Bressem et al. 2021).

The encoder reproduces torchvision.models.video.r3d_18 layer for layer — stem Conv3D 3x7x7 with
stride (1, 2, 2), four stages of two BasicBlocks (64/128/256/512 channels, 3x3x3 convolutions,
1x1x1 stride-2 downsample + BN where the shape changes) — with torch's symmetric padding and
BatchNorm epsilon, so Kinetics-400 weights can be carried over. Layer names follow the torch
state_dict (`layer2_0_conv1` <-> `layer2.0.conv1.0`).
"""

import keras
from keras import layers

from tlunet.models.blocks import decoder_stage, segmentation_head

_BN = {"epsilon": 1e-5, "momentum": 0.9}  # torch BatchNorm3d defaults (eps 1e-5, momentum 0.1)


def _conv_bn(x, filters, kernel, stride, name, relu=True):
    pad = tuple(k // 2 for k in kernel)
    if any(s > 1 for s in stride) and any(pad):
        # torch pads symmetrically; Keras "same" with stride 2 would pad one side more
        x = layers.ZeroPadding3D(pad, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    x = layers.Conv3D(filters, kernel, strides=stride, padding=padding, use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn", **_BN)(x)
    return layers.Activation("relu", name=f"{name}_relu")(x) if relu else x


def _basic_block(x, filters, stride, name):
    shortcut = x
    y = _conv_bn(x, filters, (3, 3, 3), (stride,) * 3, f"{name}_conv1")
    y = _conv_bn(y, filters, (3, 3, 3), (1, 1, 1), f"{name}_conv2", relu=False)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, (1, 1, 1), (stride,) * 3, f"{name}_downsample", relu=False)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.Activation("relu", name=f"{name}_out")(y)


def build_r3d18_encoder(input_shape):
    """The r3d_18 feature extractor as a model named "encoder".

    Returns:
        `keras.Model` with outputs [stem, layer1, layer2, layer3, layer4] at resolutions
        (D, H/2, W/2), (D, H/2, W/2), (D/2, H/4, W/4), (D/4, H/8, W/8), (D/8, H/16, W/16).
    """
    inputs = keras.Input(input_shape, name="volume")
    stem = _conv_bn(inputs, 64, (3, 7, 7), (1, 2, 2), "stem")
    x, outputs = stem, [stem]
    for stage, (filters, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), start=1):
        x = _basic_block(x, filters, stride, f"layer{stage}_0")
        x = _basic_block(x, filters, 1, f"layer{stage}_1")
        outputs.append(x)
    return keras.Model(inputs, outputs, name="encoder")


def build_resnet18_3d_unet(input_shape, classes=1, *, activation="auto", decoder_filters=(256, 128, 64, 32)):
    """3D U-Net on the r3d_18 encoder: decoder stages upsample (nearest) and concatenate layer3,
    layer2, layer1, then return to full in-plane resolution (the stem kept depth); conv-BN-ReLU
    blocks; 1x1x1 head. Input (D, H, W, C) with D divisible by 8 and H, W by 16."""
    inputs = keras.Input(input_shape, name="volume")
    _, l1, l2, l3, l4 = build_r3d18_encoder(input_shape)(inputs)
    x = l4
    for i, (skip, factor) in enumerate(((l3, 2), (l2, 2), (l1, 2), (None, (1, 2, 2)))):
        x = decoder_stage(x, skip, decoder_filters[i], name=f"decoder_stage{i}", spatial_dims=3,
                          upsample="nearest", batchnorm=True, factor=factor)
    outputs = segmentation_head(x, classes, activation=activation, kernel_size=1, spatial_dims=3)
    return keras.Model(inputs, outputs, name="resnet18_3d_unet")


__all__ = ["build_r3d18_encoder", "build_resnet18_3d_unet"]
