"""Fine-tuning strategies: the papers' trainable counts, and what one training step may move."""

import csv

import keras
import numpy as np
import pytest

import tlunet
from tlunet.finetune import (PRESET_SETS, PRESETS, apply_strategy, get_strategy, strategy_report,
                             trainable_params)
from tlunet.selection import iter_layers

# Wang et al. 2023, Table (trainable parameters), as the paper prints them.
WANG_PAPER = {"encoder": 2.22e6, "decoder": 4.4e6, "D-0": 3.76e6, "D-0,1": 4.24e6,
              "D-0,1,2": 4.36e6, "D-2,3,4": 0.164e6, "D-4": 0.00698e6}


@pytest.fixture(scope="module")
def wang_model():
    return tlunet.build_model("mobilenetv2_unet", input_shape=(512, 512, 3))


@pytest.mark.parametrize("preset,expected", [
    ("scratch", 6_628_945), ("encoder", 2_223_872), ("decoder", 4_405_073), ("D-0", 3_761_152),
    ("D-0,1", 4_240_896), ("D-0,1,2", 4_365_568), ("D-2,3,4", 164_032), ("D-4", 6_976)])
def test_wang_presets_trainable_counts(wang_model, preset, expected):
    apply_strategy(wang_model, preset)
    assert trainable_params(wang_model) == expected
    if preset in WANG_PAPER:  # the paper prints 3 significant figures (4.4M: 2)
        assert expected == pytest.approx(WANG_PAPER[preset], rel=0.005)


def test_wang_report_reproduces_paper_column(wang_model, tmp_path):
    before = trainable_params(apply_strategy(wang_model, "D-4"))
    report = strategy_report(wang_model, "wang2023", reference_params=31_031_745,
                             reference_name="U-Net")
    assert trainable_params(wang_model) == before  # the report leaves the model as it found it
    rows = {r["strategy"]: r for r in report.rows}
    assert list(rows) == list(PRESET_SETS["wang2023"])
    assert rows["decoder"]["trainable_params"] == 4_405_073
    assert round(rows["decoder"]["fewer_than_reference_pct"], 1) == 85.8  # "85.8% fewer than U-Net"
    md, csv_path = report.write(tmp_path / "wang")
    with open(csv_path) as f:
        parsed = {r["strategy"]: int(r["trainable_params"]) for r in csv.DictReader(f)}
    assert parsed == {k: v["trainable_params"] for k, v in rows.items()}
    assert "| decoder | 4,405,073 |" in open(md).read()


def test_cheng_presets():
    vunet = tlunet.build_model("vgg16_unet", input_shape=(256, 256, 3))
    assert trainable_params(apply_strategy(vunet, "frozen_encoder")) == 25_854_657 - 14_714_688
    assert trainable_params(apply_strategy(vunet, "all")) == 25_854_657
    xunet = tlunet.build_model("unet", input_shape=(256, 256, 1))
    apply_strategy(xunet, "frozen_bottleneck")
    frozen = {p for p, l in iter_layers(xunet) if l.weights and not l.trainable}
    assert frozen == {"bottleneck_conv1", "bottleneck_conv2"}
    assert all(xunet.get_layer(p).filters == 1024 for p in frozen)


def _snapshot(model):
    return {f"{p}:{w.path}": keras.ops.convert_to_numpy(w).copy()
            for p, l in iter_layers(model) for w in l.weights}


def _train_one_step(model, shape, lr=0.05):
    if not model.compiled:
        model.compile(optimizer=keras.optimizers.SGD(lr), loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.random((4, *shape), dtype=np.float32)
    y = (rng.random((4, *shape[:2], 1)) > 0.5).astype("float32")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)


def _moved(before, after):
    return {k for k in before if not np.array_equal(before[k], after[k])}


@pytest.mark.parametrize("name,shape,strategy", [
    ("mobilenetv2_unet", (64, 64, 3), "decoder"),
    ("mobilenetv2_unet", (64, 64, 1), "encoder"),
    ("mobilenetv2_unet", (64, 64, 3), "D-2,3,4"),
    ("vgg16_unet", (32, 32, 1), "frozen_encoder"),
    ("unet", (32, 32, 1), "frozen_bottleneck"),
])
def test_one_step_moves_only_trainable_weights(name, shape, strategy):
    model = apply_strategy(tlunet.build_model(name, input_shape=shape), strategy)
    frozen_layers = {p for p, l in iter_layers(model) if l.weights and not l.trainable}
    assert frozen_layers, "the strategy should freeze something"
    before = _snapshot(model)
    _train_one_step(model, shape)
    moved = _moved(before, _snapshot(model))
    trainable_keys = {f"{p}:{w.path}" for p, l in iter_layers(model) for w in l.trainable_weights}
    frozen_keys = {k for k in before if k.split(":")[0] in frozen_layers}
    assert not moved & frozen_keys, f"frozen weights moved: {sorted(moved & frozen_keys)[:3]}"
    assert trainable_keys <= moved | {k for k in trainable_keys if "bias" in k}, \
        f"trainable kernels did not move: {sorted(trainable_keys - moved)[:3]}"
    # BN statistics: frozen BN keeps them; BN in trainable groups updates them.
    bn_stats = {k for k in before if "moving_" in k}
    assert not (moved & bn_stats & frozen_keys)
    assert (bn_stats - frozen_keys) <= moved


def test_frozen_batchnorm_runs_in_inference_mode():
    model = apply_strategy(tlunet.build_model("mobilenetv2_unet", input_shape=(64, 64, 3)), "decoder")
    encoder = model.get_layer("encoder")
    x = np.random.default_rng(0).random((2, 64, 64, 3), dtype=np.float32)
    train_mode = keras.ops.convert_to_numpy(encoder(x, training=True)["P5"])
    infer_mode = keras.ops.convert_to_numpy(encoder(x, training=False)["P5"])
    np.testing.assert_allclose(train_mode, infer_mode, rtol=1e-5, atol=1e-5)
    # ...while a trainable BN (decoder) does behave differently in training mode.
    apply_strategy(model, "all")
    train_mode = keras.ops.convert_to_numpy(encoder(x, training=True)["P5"])
    assert not np.allclose(train_mode, infer_mode, atol=1e-3)


def test_batchnorm_freeze_policy_freezes_every_bn():
    model = apply_strategy(tlunet.build_model("mobilenetv2_unet", input_shape=(64, 64, 3)), "all",
                           batchnorm="freeze")
    bns = [l for _, l in iter_layers(model) if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and not any(l.trainable for l in bns)
    before = _snapshot(model)
    _train_one_step(model, (64, 64, 3))
    moved = _moved(before, _snapshot(model))
    assert not {k for k in moved if "moving_" in k or "gamma" in k or "beta" in k}
    assert "decoder_stage0_conv1:decoder_stage0_conv1/kernel" in moved


def test_changing_strategy_recompiles_with_same_loss_and_metrics():
    """Stage 1 frozen encoder, stage 2 everything (Cheng's V-Unet schedule) on one compiled model."""
    shape = (32, 32, 3)
    model = apply_strategy(tlunet.build_model("vgg16_unet", input_shape=shape), "frozen_encoder")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy",
                  metrics=[keras.metrics.BinaryAccuracy(name="acc")])
    _train_one_step(model, shape)
    config_before = model.get_compile_config()
    before = _snapshot(model)
    apply_strategy(model, "all")
    assert model.compiled
    assert model.get_compile_config()["loss"] == config_before["loss"]
    assert model.optimizer.learning_rate.numpy() == pytest.approx(1e-3)
    _train_one_step(model, shape)
    moved = _moved(before, _snapshot(model))
    assert "encoder/block1_conv1:block1_conv1/kernel" in moved  # stage 2 trains the encoder
    logs = model.evaluate(np.zeros((2, *shape), "float32"), np.zeros((2, *shape[:2], 1), "float32"),
                          verbose=0, return_dict=True)
    assert "acc" in logs


def test_recompile_true_on_uncompiled_model_is_refused():
    model = tlunet.build_model("unet", input_shape=(32, 32, 1))
    with pytest.raises(ValueError, match="never compiled"):
        apply_strategy(model, "frozen_bottleneck", recompile=True)


def test_explicit_selectors_and_regexes():
    model = tlunet.build_model("mobilenetv2_unet", input_shape=(64, 64, 3))
    strategy = {"trainable": ["re:encoder/block_1[3-6]_.*", "decoder", "head"]}
    apply_strategy(model, strategy)
    expected = 4_405_073 + sum(
        sum(int(np.prod(w.shape)) for w in l.trainable_weights)
        for p, l in iter_layers(model) if p.startswith(("encoder/block_13_", "encoder/block_14_",
                                                         "encoder/block_15_", "encoder/block_16_")))
    assert trainable_params(model) == expected > 4_405_073
    assert not model.get_layer("encoder").get_layer("block_12_expand").trainable


@pytest.mark.parametrize("strategy,error", [
    ("decoder_only", "Unknown strategy"),
    ({"trainable": ["bottleneck"]}, "matches no layer"),
    ({"frozen": "encoder"}, "list of selectors"),
    ({"trainable": ["re:("]}, "Bad regex"),
    ({"freeze": ["encoder"]}, "extra keys"),
])
def test_bad_strategies_raise_clear_errors(strategy, error):
    model = tlunet.build_model("mobilenetv2_unet", input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match=error):
        apply_strategy(model, strategy)


def test_bad_batchnorm_policy():
    model = tlunet.build_model("unet", input_shape=(32, 32, 1))
    with pytest.raises(ValueError, match="batchnorm"):
        apply_strategy(model, "all", batchnorm="train")


def test_presets_are_all_resolvable_and_described():
    for name in PRESETS:
        s = get_strategy(name)
        assert s.name == name and s.description
    for names in PRESET_SETS.values():
        assert all(n in PRESETS for n in names)
