"""Model zoo: the papers' architectures to the parameter, shapes, and argument validation."""

import keras
import numpy as np
import pytest

import tlunet
from tlunet.finetune import params_by_group, trainable_params


def test_list_models_names_the_papers_models():
    assert {"unet", "vgg16_unet", "mobilenetv2_unet"} <= set(tlunet.list_models())


def test_unet_matches_cheng_lam_count():
    model = tlunet.build_model("unet", input_shape=(256, 256, 3))
    assert model.count_params() == 31_031_745
    assert trainable_params(model) == 31_031_745
    # No batch norm anywhere, 2x2 transposed convs up, 1x1 sigmoid head.
    layers = model.layers
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in layers)
    ups = [l for l in layers if isinstance(l, keras.layers.Conv2DTranspose)]
    assert [u.filters for u in ups] == [512, 256, 128, 64]
    assert all(u.kernel_size == (2, 2) and u.strides == (2, 2) for u in ups)
    assert model.get_layer("head_conv").kernel_size == (1, 1)
    assert model.get_layer("head_activation").activation.__name__ == "sigmoid"
    assert [model.get_layer(f"bottleneck_conv{i}").filters for i in (1, 2)] == [1024, 1024]


def test_vgg16_unet_matches_v_unet_count():
    model = tlunet.build_model("vgg16_unet", input_shape=(256, 256, 3))
    assert model.count_params() == 25_854_657
    assert model.get_layer("encoder").count_params() == 14_714_688
    encoder = model.get_layer("encoder")
    assert encoder.output_shape[-1] == (None, 16, 16, 512)  # bridge block5_conv3, no last pool
    with pytest.raises(ValueError):
        encoder.get_layer("block5_pool")
    assert not [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def test_vgg16_unet_batchnorm_is_in_the_decoder_only():
    """batchnorm=True (for training from random weights): conv-BN-ReLU in each decoder stage, no conv
    bias there; the VGG16 encoder is unchanged."""
    plain = tlunet.build_model("vgg16_unet", input_shape=(64, 64, 1))
    bn = tlunet.build_model("vgg16_unet", input_shape=(64, 64, 1), batchnorm=True)
    norms = [layer.name for layer in bn.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 8 and all(name.startswith("decoder_stage") for name in norms)
    assert bn.get_layer("encoder").count_params() == plain.get_layer("encoder").count_params()


def test_mobilenetv2_unet_matches_wang_counts():
    model = tlunet.build_model("mobilenetv2_unet", input_shape=(512, 512, 3))
    assert trainable_params(model) == 6_628_945
    groups = params_by_group(model)
    assert groups["encoder"]["trainable"] == 2_223_872
    decoder_and_head = sum(v["trainable"] for k, v in groups.items() if k != "encoder")
    assert decoder_and_head == 4_405_073
    assert [groups[f"decoder_stage{i}"]["trainable"] for i in range(5)] == [
        3_761_152, 479_744, 124_672, 32_384, 6_976]
    # smp decoder: conv without bias -> BN -> ReLU, nearest upsampling, 3x3 head with bias.
    conv = model.get_layer("decoder_stage0_conv1")
    assert conv.use_bias is False and conv.filters == 256
    assert model.get_layer("decoder_stage0_upsample").interpolation == "nearest"
    assert model.get_layer("head_conv").kernel_size == (3, 3)
    assert model.get_layer("head_conv").use_bias


def test_mobilenetv2_skips_have_smp_channels():
    encoder = tlunet.build_model("mobilenetv2_unet", input_shape=(64, 96, 3)).get_layer("encoder")
    assert {k: tuple(v.shape[1:]) for k, v in encoder.output.items()} == {
        "P1": (32, 48, 16), "P2": (16, 24, 24), "P3": (8, 12, 32), "P4": (4, 6, 96), "P5": (2, 3, 1280)}


@pytest.mark.parametrize("name", ["vgg16_unet", "mobilenetv2_unet"])
def test_encoders_hand_out_a_pyramid_keyed_by_level(name):
    """Pn is 2**n smaller than the input; the model's divisor is the deepest level's reduction."""
    model = tlunet.build_model(name, input_shape=(64, 96, 1))
    pyramid = model.get_layer("encoder").output
    for key, tensor in pyramid.items():
        n = int(key[1:])
        assert tuple(tensor.shape[1:3]) == (64 // 2 ** n, 96 // 2 ** n), (key, tensor.shape)
    assert tlunet.get_model_info(name).divisor == 2 ** max(int(k[1:]) for k in pyramid)
    # each decoder stage takes the level it upsamples to (the first skip is the second-deepest)
    deepest = max(int(k[1:]) for k in pyramid)
    skip = model.get_layer("decoder_stage0_concat").input[1]
    assert tuple(skip.shape[1:3]) == (64 // 2 ** (deepest - 1), 96 // 2 ** (deepest - 1))


@pytest.mark.parametrize("name,shape,classes", [
    ("unet", (48, 80, 1), 1),
    ("unet", (32, 32, 2), 4),
    ("vgg16_unet", (32, 64, 1), 3),
    ("vgg16_unet", (48, 32, 3), 1),
    ("mobilenetv2_unet", (64, 96, 1), 1),
    ("mobilenetv2_unet", (32, 32, 3), 3),
])
def test_output_shape_and_activation(name, shape, classes):
    model = tlunet.build_model(name, input_shape=shape, classes=classes)
    x = np.random.default_rng(0).random((2, *shape), dtype=np.float32)
    y = model.predict(x, verbose=0)
    assert y.shape == (2, *shape[:2], classes)
    assert y.dtype == np.float32
    if classes == 1:
        assert np.all((y >= 0) & (y <= 1))
    else:
        np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("classes,squash", [(1, "sigmoid"), (3, "softmax")])
def test_logits_on_request(classes, squash):
    probs_model = tlunet.build_model("unet", input_shape=(32, 32, 1), classes=classes)
    logits_model = tlunet.build_model("unet", input_shape=(32, 32, 1), classes=classes, activation=None)
    logits_model.set_weights(probs_model.get_weights())
    x = np.random.default_rng(1).random((1, 32, 32, 1), dtype=np.float32)
    logits = logits_model.predict(x, verbose=0)
    expected = getattr(keras.activations, squash)(logits)
    np.testing.assert_allclose(probs_model.predict(x, verbose=0), expected, atol=1e-6)


@pytest.mark.parametrize("name", ["unet", "vgg16_unet", "mobilenetv2_unet"])
def test_none_spatial_dims_accept_any_valid_size(name):
    model = tlunet.build_model(name, input_shape=(None, None, 1))
    for size in [(32, 64), (64, 32)]:
        assert model.predict(np.zeros((1, *size, 1), np.float32), verbose=0).shape == (1, *size, 1)


def _small_shape(info):
    div = info.divisor if isinstance(info.divisor, tuple) else (info.divisor,) * info.spatial_dims
    channels = 1 if info.channels is None or 1 in info.channels else info.channels[0]
    return (*[2 * d for d in div], channels)


@pytest.mark.parametrize("name", tlunet.list_models())
def test_every_model_honours_the_group_contract(name):
    """encoder / bottleneck / decoder_stage{i} / head: every layer is in one, and the presets that
    select by group work on every registered model (hybrid_unet3d's two encoders and fusion units
    are `encoder_*`)."""
    from tlunet.finetune import apply_strategy, trainable_params
    from tlunet.selection import group_of, iter_layers
    model = tlunet.build_model(name, input_shape=_small_shape(tlunet.get_model_info(name)))
    found = {group_of(path) for path, layer in iter_layers(model) if layer.weights}
    assert found <= {"encoder", "bottleneck", "head"} | {g for g in found if g.startswith("decoder_stage")}, found
    assert {"encoder", "head"} <= found and any(g.startswith("decoder_stage") for g in found)
    total = trainable_params(model)
    apply_strategy(model, "frozen_encoder")
    frozen = [path for path, layer in iter_layers(model) if layer.weights and not layer.trainable]
    assert frozen and all(group_of(p) == "encoder" for p in frozen)
    assert 0 < trainable_params(model) < total


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "resnet_unet"}, "Valid models"),
    ({"name": "unet", "input_shape": (250, 256, 3)}, "multiples of 16"),
    ({"name": "mobilenetv2_unet", "input_shape": (240, 240, 3)}, "multiples of 32"),
    ({"name": "mobilenetv2_unet", "input_shape": (64, 64, 4)}, "1 or 3 input channels"),
    ({"name": "unet", "input_shape": (64, 64)}, "3 entries"),
    ({"name": "unet", "input_shape": (8, 8, 1)}, "multiples of 16"),
    ({"name": "unet", "classes": 0}, "positive integer"),
    ({"name": "unet", "encoder_weights": "imagenet"}, "no pretrained encoder"),
    ({"name": "vgg16_unet", "input_shape": (32, 32, 3), "dropout": 0.5}, "does not take"),
    ({"name": "vgg16_unet", "input_shape": (32, 32, 1), "channel_mode": "tile"}, "channel_mode"),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tlunet.build_model(**kwargs)
