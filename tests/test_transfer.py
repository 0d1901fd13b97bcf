"""transfer_weights: copy by name and shape, and report what was not copied."""

import keras
import numpy as np
import pytest

import tlunet
from tlunet.selection import iter_layers


def _weights(model):
    return {p: [w.copy() for w in l.get_weights()] for p, l in iter_layers(model) if l.weights}


def _equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def test_same_architecture_copies_everything():
    keras.utils.set_random_seed(1)
    src = tlunet.build_model("unet", input_shape=(32, 32, 1))
    keras.utils.set_random_seed(2)
    dst = tlunet.build_model("unet", input_shape=(64, 64, 1))  # size does not matter for weights
    report = tlunet.transfer_weights(src, dst)
    assert not report.missing and not report.shape_mismatch and not report.unused
    src_w, dst_w = _weights(src), _weights(dst)
    assert set(report.copied) == set(src_w) == set(dst_w)
    assert all(_equal(src_w[p], dst_w[p]) for p in src_w)


def test_head_with_other_classes_is_reported_and_left_alone():
    src = tlunet.build_model("unet", input_shape=(32, 32, 1), classes=1)
    dst = tlunet.build_model("unet", input_shape=(32, 32, 1), classes=3)
    head_before = dst.get_layer("head_conv").get_weights()
    report = tlunet.transfer_weights(src, dst)
    assert [m[0] for m in report.shape_mismatch] == ["head_conv"]
    assert report.shape_mismatch[0][1][0] == (1, 1, 64, 1)
    assert report.shape_mismatch[0][2][0] == (1, 1, 64, 3)
    assert _equal(dst.get_layer("head_conv").get_weights(), head_before)
    assert "bottleneck_conv2" in report.copied
    with pytest.raises(ValueError, match="strict"):
        tlunet.transfer_weights(src, dst, strict=True)


def test_body_fine_tuning_excludes_the_head():
    src = tlunet.build_model("mobilenetv2_unet", input_shape=(32, 32, 3), classes=2)
    dst = tlunet.build_model("mobilenetv2_unet", input_shape=(32, 32, 3), classes=2)
    head_before = dst.get_layer("head_conv").get_weights()
    report = tlunet.transfer_weights(src, dst, exclude=["head"])
    assert "head_conv" not in report.copied and "head_conv" in report.unused
    assert _equal(dst.get_layer("head_conv").get_weights(), head_before)
    assert _equal(dst.get_layer("encoder").get_layer("Conv1").get_weights(),
                  src.get_layer("encoder").get_layer("Conv1").get_weights())
    # BN moving statistics travel with their layer.
    bn_src = src.get_layer("decoder_stage0_bn1")
    bn_src.moving_mean.assign(np.full(bn_src.moving_mean.shape, 0.25, "float32"))
    tlunet.transfer_weights(src, dst, include=["decoder_stage0"])
    np.testing.assert_array_equal(dst.get_layer("decoder_stage0_bn1").moving_mean.numpy(), 0.25)


def test_bare_application_into_nested_encoder_by_name():
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    dst = tlunet.build_model("vgg16_unet", input_shape=(32, 32, 3))
    report = tlunet.transfer_weights(vgg, dst, match="name")
    assert sorted(report.copied) == sorted(f"encoder/{l.name}" for l in vgg.layers if l.weights)
    assert not report.unused and not report.shape_mismatch
    assert all(p.startswith(("decoder_stage", "head")) for p in report.missing)
    np.testing.assert_array_equal(dst.get_layer("encoder").get_layer("block3_conv2").get_weights()[0],
                                  vgg.get_layer("block3_conv2").get_weights()[0])


def test_grey_pretraining_into_rgb_model_reports_first_conv():
    """X-Unet pre-trained on grey saliency images, reused on 3-channel input: only the first conv
    differs in shape."""
    src = tlunet.build_model("unet", input_shape=(32, 32, 1))
    dst = tlunet.build_model("unet", input_shape=(32, 32, 3))
    report = tlunet.transfer_weights(src, dst)
    assert [m[0] for m in report.shape_mismatch] == ["encoder_block1_conv1"]


def test_rename_maps_source_layers():
    src = tlunet.build_model("unet", input_shape=(32, 32, 1), filters=(8, 16, 32, 64, 128))
    dst = tlunet.build_model("unet", input_shape=(32, 32, 1), filters=(8, 16, 32, 64, 128))
    report = tlunet.transfer_weights(src, dst, include=["decoder_stage3"],
                                     rename={"decoder_stage3_conv2": "nothing_here"})
    assert "decoder_stage3_conv2" in report.missing
    assert "decoder_stage3_conv1" in report.copied


def test_bad_selectors_and_modes():
    m = tlunet.build_model("unet", input_shape=(32, 32, 1), filters=(8, 16, 32, 64, 128))
    with pytest.raises(ValueError, match="matches no layer"):
        tlunet.transfer_weights(m, m, include=["classifier"])
    with pytest.raises(ValueError, match="match"):
        tlunet.transfer_weights(m, m, match="index")
