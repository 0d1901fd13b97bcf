"""U-Nets whose encoder is a (pretrained) keras.applications network: V-Unet and Wang 2023's model."""

import keras

from tlunet.encoders import build_encoder, get_encoder_spec
from tlunet.layers import EncoderPreprocessing
from tlunet.models.blocks import decoder_stage, segmentation_head
from tlunet.selection import iter_layers


def build_encoder_unet(input_shape, classes=1, *, encoder, decoder_filters, decoder_upsample,
                       decoder_batchnorm, head_kernel_size, activation="auto", encoder_weights=None,
                       channel_mode="repeat", bn_momentum=None, name=None):
    """Wires an encoder from `tlunet.encoders` to a U-Net decoder.

    The model takes float images in [0, 1]; `encoder_preprocess` maps them to the range the
    encoder's weights expect. Decoder stage i (0 = deepest) upsamples x2, concatenates the skip of
    that resolution (stages past the shallowest skip get none) and applies two 3x3 convs.

    Args:
        input_shape: (H, W, C), C in {1, 3}; H and W divisible by the encoder's reduction or None.
        classes: output channels.
        encoder: registry name of the encoder.
        decoder_filters: channels of each decoder stage, deepest first.
        decoder_upsample: "transpose" or "nearest".
        decoder_batchnorm: conv -> BN -> ReLU (no conv bias) instead of conv + ReLU.
        head_kernel_size: kernel of `head_conv`.
        activation: "auto", an activation name, or None/"logits".
        encoder_weights: None, "imagenet" or a weights-file path (see `build_encoder`).
        channel_mode: "repeat" or "fold" for 1-channel inputs (see `build_encoder`).
        bn_momentum: if set, the momentum of every BatchNormalization layer (encoder and decoder).
        name: model name.

    Returns:
        A functional `keras.Model` with groups `encoder` (a nested model keeping keras.applications
        layer names, plus `encoder_grey_to_rgb`/`encoder_preprocess`), `decoder_stage{i}`, `head`.
    """
    spec = get_encoder_spec(encoder)
    inputs = keras.Input(shape=input_shape, name="image")
    enc = build_encoder(encoder, input_shape, weights=encoder_weights, channel_mode=channel_mode)
    x = inputs
    if input_shape[-1] == 1 and channel_mode == "repeat":
        x = keras.layers.Concatenate(name="encoder_grey_to_rgb")([x, x, x])
    x = EncoderPreprocessing(spec.preprocessing, name="encoder_preprocess")(x)
    pyramid = enc(x)
    deepest = int(spec.levels[-1][1:])
    x = pyramid[spec.levels[-1]]
    # decoder stage i upsamples to level deepest-i-1 and takes that level's features, if the
    # encoder has them (MobileNetV2 has no full-resolution level, so its last stage has no skip)
    skips = [pyramid.get(f"P{deepest - i - 1}") for i in range(len(decoder_filters))]
    for i, (f, skip) in enumerate(zip(decoder_filters, skips)):
        x = decoder_stage(x, skip, f, name=f"decoder_stage{i}", upsample=decoder_upsample,
                          batchnorm=decoder_batchnorm)
    outputs = segmentation_head(x, classes, activation=activation, kernel_size=head_kernel_size)
    model = keras.Model(inputs, outputs, name=name or f"{encoder}_unet")
    if bn_momentum is not None:
        for _, layer in iter_layers(model):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = bn_momentum
    return model


def build_vgg16_unet(input_shape, classes=1, *, activation="auto", encoder_weights=None,
                     channel_mode="repeat", batchnorm=False):
    """V-Unet (Cheng & Lam 2021): VGG16 encoder bridged at block5_conv3, transposed-conv decoder
    with 512/256/128/64 filters, no batch norm, 1x1 head. `batchnorm=True` puts BatchNorm in the
    decoder's convolutions (not Cheng & Lam's; for training from random weights on few images;
    VGG16's encoder has none either way). See `build_encoder_unet` for the other args."""
    return build_encoder_unet(
        input_shape, classes, encoder="vgg16", decoder_filters=(512, 256, 128, 64),
        decoder_upsample="transpose", decoder_batchnorm=batchnorm, head_kernel_size=1,
        activation=activation, encoder_weights=encoder_weights, channel_mode=channel_mode,
        name="vgg16_unet")


def build_mobilenetv2_unet(input_shape, classes=1, *, activation="auto", encoder_weights=None,
                           channel_mode="repeat", bn_momentum=0.9):
    """Wang et al. 2023's model, i.e. segmentation-models-pytorch `Unet("mobilenet_v2")`: MobileNetV2
    encoder, nearest-upsampling decoder with 256/128/64/32/16 channels and conv-BN-ReLU, 3x3 head.

    `bn_momentum=0.9` is PyTorch's BatchNorm default (momentum 0.1 there), which the paper's smp
    model trained with; keras.applications' MobileNetV2 uses 0.999, whose moving statistics need
    thousands of steps before inference-mode outputs make sense on a new domain.
    See `build_encoder_unet` for the other args."""
    return build_encoder_unet(
        input_shape, classes, encoder="mobilenetv2", decoder_filters=(256, 128, 64, 32, 16),
        decoder_upsample="nearest", decoder_batchnorm=True, head_kernel_size=3,
        activation=activation, encoder_weights=encoder_weights, channel_mode=channel_mode,
        bn_momentum=bn_momentum, name="mobilenetv2_unet")
