"""resnet18_3d_unet: torchvision r3d_18 layout to the parameter, shapes, groups, one training step."""

import keras
import numpy as np
import pytest

import tlunet
from tlunet.finetune import apply_strategy, params_by_group, trainable_params
from tlunet.models.resnet3d import build_r3d18_encoder


@pytest.mark.parametrize("channels,expected", [(3, 33_166_272), (1, 33_147_456)])
def test_encoder_matches_torchvision_r3d18_counts(channels, expected):
    # torch counts conv weights + BN affine; Keras' trainable weights are exactly those
    encoder = build_r3d18_encoder((16, 112, 112, channels))
    assert trainable_params(encoder) == expected
    assert [tuple(o.shape[1:]) for o in encoder.outputs] == [
        (16, 56, 56, 64), (16, 56, 56, 64), (8, 28, 28, 128), (4, 14, 14, 256), (2, 7, 7, 512)]
    stem = encoder.get_layer("stem_conv")
    assert stem.kernel_size == (3, 7, 7) and stem.strides == (1, 2, 2) and not stem.use_bias
    assert encoder.get_layer("layer2_0_downsample_conv").kernel_size == (1, 1, 1)
    with pytest.raises(ValueError):
        encoder.get_layer("layer1_0_downsample_conv")  # no shape change in layer1
    assert all(l.epsilon == 1e-5 for l in encoder.layers if isinstance(l, keras.layers.BatchNormalization))


def test_unet_shapes_groups_and_validation():
    model = tlunet.build_model("resnet18_3d_unet", input_shape=(8, 32, 48, 1), classes=3)
    assert model.output_shape == (None, 8, 32, 48, 3)
    groups = params_by_group(model)
    assert list(groups) == ["encoder", "decoder_stage0", "decoder_stage1", "decoder_stage2",
                            "decoder_stage3", "head"]
    assert groups["encoder"]["trainable"] == 33_147_456
    apply_strategy(model, "decoder")
    assert trainable_params(model) == sum(v["trainable"] for k, v in groups.items() if k != "encoder")
    with pytest.raises(ValueError, match="multiples of 8 x 16 x 16"):
        tlunet.build_model("resnet18_3d_unet", input_shape=(12, 32, 32, 1))
    with pytest.raises(ValueError, match="4 entries"):
        tlunet.build_model("resnet18_3d_unet", input_shape=(32, 32, 1))


@pytest.mark.slow
def test_one_training_step_moves_only_the_decoder():
    model = apply_strategy(tlunet.build_model("resnet18_3d_unet", input_shape=(8, 32, 32, 1)), "decoder")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy")
    enc = [w.copy() for w in model.get_layer("encoder").get_weights()]
    head = model.get_layer("head_conv").get_weights()[0].copy()
    x = np.random.default_rng(0).random((2, 8, 32, 32, 1), dtype=np.float32)
    model.fit(x, (x > 0.5).astype("float32"), epochs=1, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(enc, model.get_layer("encoder").get_weights()))
    assert not np.array_equal(head, model.get_layer("head_conv").get_weights()[0])
