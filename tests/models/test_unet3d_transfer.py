"""unet3d, the hybrid encoder with selective fusion, and Wang et al. 2020's four transfer methods:
which weights of the target model came from the source model."""

import keras
import numpy as np
import pytest

import tlunet
from tlunet.layers import SelectiveFusion
from tlunet.selection import iter_layers

SHAPE = (16, 16, 16, 1)
FILTERS = (4, 8, 16)


def _source(classes=1, seed=1):
    keras.utils.set_random_seed(seed)
    return tlunet.build_model("unet3d", input_shape=SHAPE, classes=classes, filters=FILTERS)


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))


def _copied_groups(model, source, prefix=""):
    """Top-level groups of `model` whose every layer equals the source layer of the same name."""
    out = {}
    for path, layer in iter_layers(model):
        if not layer.weights:
            continue
        name = path.split("/")[-1]
        group = path.split("/")[0] if "/" in path else name.split("_")[0]
        try:
            src = source.get_layer(name)
        except ValueError:
            src = None
        same = src is not None and [w.shape for w in src.weights] == [w.shape for w in layer.weights] \
            and _same(src, layer)
        out.setdefault(group, []).append(same)
    return {g: all(v) for g, v in out.items()}


def test_unet3d_reference_counts_and_groups():
    model = tlunet.build_model("unet3d")
    assert model.input_shape == (None, 64, 128, 128, 1)
    # 3x3x3 convs without bias + BN (4 weights/channel), 2x2x2 transposed convs, 1x1x1 head.
    f, expected, c_in = (32, 64, 128, 256, 320), 0, 1
    for c in f:
        expected += 27 * c_in * c + 4 * c + 27 * c * c + 4 * c
        c_in = c
    for deep, c in zip(f[::-1][:-1], f[::-1][1:]):
        expected += 8 * deep * c + c + 27 * 2 * c * c + 4 * c + 27 * c * c + 4 * c
    expected += f[0] + 1
    assert model.count_params() == expected
    assert {layer.name.split("_")[0] for layer in model.layers if layer.weights} == {
        "encoder", "bottleneck", "decoder", "head"}
    with pytest.raises(ValueError, match="multiples of 16"):
        tlunet.build_model("unet3d", input_shape=(20, 32, 32, 1))


def test_continual_copies_everything_including_head():
    src = _source()
    model, report = tlunet.build_transfer_model("continual", src)
    assert all(_copied_groups(model, src).values())
    assert not report.missing and len(report.copied) == len([l for l in src.layers if l.weights])


def test_body_fine_tuning_leaves_only_the_head_new():
    src = _source(classes=1)
    model, report = tlunet.build_transfer_model("body", src, classes=3)
    groups = _copied_groups(model, src)
    assert groups.pop("head") is False
    assert all(groups.values())
    assert model.output_shape[-1] == 3
    assert "head_conv" not in report.copied


def test_pretrained_encoder_copies_encoder_and_bottleneck_only():
    src = _source()
    model, _ = tlunet.build_transfer_model("encoder", src)
    groups = _copied_groups(model, src)
    assert groups["encoder"] and groups["bottleneck"]
    assert not groups["decoder"] and not groups["head"]


def test_hybrid_encoder_source_branch_is_pretrained_target_branch_is_not():
    src = _source()
    model, report = tlunet.build_transfer_model("hybrid", src)
    assert _same(model.get_layer("encoder_source"), keras.Model(src.input, [
        src.get_layer(n).output for n in ("encoder_block1_relu2", "encoder_block2_relu2", "bottleneck_relu2")]))
    target = model.get_layer("encoder_target")
    assert not any(np.array_equal(target.get_layer(n).get_weights()[0], src.get_layer(n).get_weights()[0])
                   for n in ("encoder_block1_conv1", "bottleneck_conv1"))
    assert all(p.startswith("encoder_source/") for p in report.copied)
    assert sorted(l.name for l in model.layers if isinstance(l, SelectiveFusion)) == ["encoder_fusion1", "encoder_fusion2", "encoder_fusion3"]
    assert model.output_shape == (None, *SHAPE[:-1], 1)


def test_scratch_copies_nothing_and_continual_refuses_new_classes():
    src = _source()
    keras.utils.set_random_seed(2)
    model, report = tlunet.build_transfer_model("scratch", src)
    assert not report.copied and not any(_copied_groups(model, src).values())
    with pytest.raises(ValueError, match="method='body'"):
        tlunet.build_transfer_model("continual", src, classes=2)
    with pytest.raises(ValueError, match="method"):
        tlunet.build_transfer_model("finetune", src)
    with pytest.raises(ValueError, match="plain U-Net"):
        tlunet.build_transfer_model("body", tlunet.build_model("resnet18_3d_unet", input_shape=(8, 16, 16, 1)))


def test_selective_fusion_weights_sum_to_one_and_select_a_branch():
    layer = SelectiveFusion(reduction=2, min_units=2)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 4, 4, 4, 6)).astype("float32")
    b = rng.normal(size=(2, 4, 4, 4, 6)).astype("float32")
    out = np.asarray(layer([a, b]))
    w = np.asarray(layer.branch_weights([a, b]))
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out, a * w[:, 0, None, None, None] + b * w[:, 1, None, None, None], rtol=1e-5)
    bias = np.zeros(12, "float32")
    bias[:6] = 50.0  # attention bias strongly on the first branch -> output equals a
    layer.attend_bias.assign(bias)
    np.testing.assert_allclose(np.asarray(layer([a, b])), a, atol=1e-5)


def test_hybrid_model_trains_and_round_trips_keras_file(tmp_path):
    model, _ = tlunet.build_transfer_model("hybrid", _source())
    model.compile(optimizer="adam", loss="binary_crossentropy")
    x = np.random.default_rng(0).random((2, *SHAPE)).astype("float32")
    y = (x > 0.5).astype("float32")
    before = model.get_layer("encoder_fusion2").attend_kernel.numpy().copy()
    model.fit(x, y, epochs=1, verbose=0)
    assert not np.array_equal(before, model.get_layer("encoder_fusion2").attend_kernel.numpy())
    model.save(tmp_path / "hybrid.keras")
    loaded = keras.models.load_model(tmp_path / "hybrid.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
