"""Training: determinism, kill-and-resume, stages, folds, fractions, mixed precision, distribution."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import tlunet
from tlunet.data import make_dataset
from tlunet.selection import iter_layers
from tlunet.training import compile_model, fit, precise_bn, read_history, run_stages

SCRIPT = textwrap.dedent('''
    import os, sys, json
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np, keras
    import tlunet
    from tlunet.data import make_dataset
    from tlunet.train import configure, compile_model, fit

    run_dir, epochs, kill_at, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    configure(seed=seed, deterministic=True)
    rng = np.random.default_rng(0)
    x = (rng.random((8, 32, 32, 1)) * 255).astype("uint8")
    y = (x[..., 0] > 127).astype("uint8")
    ds = make_dataset(x, y, batch_size=4, augment="wang2023", seed=seed)  # reshuffled + augmented each epoch
    model = tlunet.build_model("unet", input_shape=(32, 32, 1), filters=(4, 8, 16, 32, 64))
    compile_model(model, learning_rate=1e-2)

    class Kill(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == kill_at:
                os._exit(3)  # like a killed process: no cleanup, no callbacks

    fit(model, ds, ds, run_dir=run_dir, epochs=epochs, callbacks=[Kill()], verbose=0)
    np.save(os.path.join(run_dir, "final.npy"), np.concatenate([w.ravel() for w in model.get_weights()]))
    print(json.dumps({"iterations": int(model.optimizer.iterations.numpy())}))
''')


def _run(tmp_path, run_dir, epochs, kill_at=-1, seed=0):
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    return subprocess.run([sys.executable, str(script), str(run_dir), str(epochs), str(kill_at), str(seed)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_same_seed_gives_bit_identical_weights_and_resume_continues(tmp_path):
    a, b, c, d = (tmp_path / n for n in "abcd")
    ra, rb = _run(tmp_path, a, 4), _run(tmp_path, b, 4)
    assert ra.returncode == 0, ra.stderr[-3000:]
    wa, wb = np.load(a / "final.npy"), np.load(b / "final.npy")
    np.testing.assert_array_equal(wa, wb)  # same seed, deterministic ops: bit-identical
    rc = _run(tmp_path, c, 4, seed=1)
    assert not np.array_equal(np.load(c / "final.npy"), wa)  # and the seed matters

    killed = _run(tmp_path, d, 4, kill_at=2)
    assert killed.returncode == 3 and not (d / "final.npy").exists()
    assert len(read_history(d / "history.csv")["loss"]) == 2  # two epochs completed
    resumed = _run(tmp_path, d, 4)  # the same command again
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    history = read_history(d / "history.csv")
    assert history["epoch"] == [0, 1, 2, 3]  # continued at epoch 2, not from scratch
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["iterations"] == 4 * 2
    # Weights, optimizer state and epoch counter came back, and the resumed epochs saw the batches
    # (order and augmentation) the uninterrupted run saw: the result equals the uninterrupted run.
    np.testing.assert_array_equal(np.load(d / "final.npy"), wa)


def _tiny_data(n=8, size=32):
    rng = np.random.default_rng(0)
    x = (rng.random((n, size, size, 1)) * 255).astype("uint8")
    return x, (x[..., 0] > 127).astype("uint8")


def test_fit_writes_history_and_best_checkpoint(tmp_path):
    x, y = _tiny_data()
    ds = make_dataset(x, y, batch_size=4)
    model = compile_model(tlunet.build_model("unet", input_shape=(32, 32, 1), filters=(4, 8, 16, 32, 64)))
    history = fit(model, ds, ds, run_dir=str(tmp_path), epochs=2, verbose=0)
    assert set(history) >= {"epoch", "loss", "val_loss", "dice", "val_dice", "miou", "pixel_accuracy"}
    best = keras.models.load_model(tmp_path / "best.keras")
    assert best.count_params() == model.count_params()
    with pytest.raises(ValueError, match="not compiled"):
        fit(tlunet.build_model("unet", input_shape=(32, 32, 1)), ds, run_dir=str(tmp_path), epochs=1)


def test_stages_train_then_skip_finished_stages(tmp_path):
    x, y = _tiny_data()
    ds = make_dataset(x, y, batch_size=4)
    stages = [{"strategy": "frozen_encoder", "epochs": 1, "learning_rate": 1e-3},
              {"strategy": "all", "epochs": 1, "learning_rate": 1e-4}]
    model = tlunet.build_model("vgg16_unet", input_shape=(32, 32, 1))
    enc_before = model.get_layer("encoder").get_weights()[0].copy()
    results = run_stages(model, stages, ds, run_dir=str(tmp_path), verbose=0)
    assert [r["strategy"] for r in results] == ["frozen_encoder", "all"]
    assert results[0]["trainable_params"] < results[1]["trainable_params"] == model.count_params()
    assert not np.array_equal(model.get_layer("encoder").get_weights()[0], enc_before)  # stage 2
    final = [w.copy() for w in model.get_weights()]
    again = tlunet.build_model("vgg16_unet", input_shape=(32, 32, 1))
    rerun = run_stages(again, stages, ds, run_dir=str(tmp_path), verbose=0)  # both done: no training
    assert [r["epochs_run"] for r in rerun] == [1, 1]
    assert all(np.array_equal(a, b) for a, b in zip(again.get_weights(), final))
    with pytest.raises(ValueError, match="unknown keys"):
        run_stages(again, [{"strategy": "all", "epoch": 3}], ds, run_dir=str(tmp_path / "x"))


def test_a_dict_strategy_gets_a_plain_stage_folder(tmp_path):
    x, y = _tiny_data()
    model = tlunet.build_model("unet", input_shape=(32, 32, 1), filters=(4, 8, 16))
    run_stages(model, [{"strategy": {"trainable": ["decoder", "head"]}, "epochs": 1}], make_dataset(x, y, batch_size=4),
               run_dir=str(tmp_path), verbose=0)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["stage0_custom"]


def test_stages_with_bn_data_leave_a_layer_frozen_later_with_its_final_statistics(tmp_path):
    """Stage 0 trains everything, stage 1 freezes the encoder. With `bn_data` every BatchNorm ends
    with the average batch statistics of the final weights, the encoder's included (recomputed at
    the end of stage 0, when it last trained); a recomputation now changes nothing. Without it the
    encoder keeps the running averages it lagged with."""
    x, y = _tiny_data(n=16)
    stages = [{"strategy": "all", "epochs": 1}, {"strategy": {"trainable": ["decoder", "head"]}, "epochs": 1}]
    bn_data = make_dataset(x, y, batch_size=4, seed=1)  # shuffled: every pass must be its first (EpochClock)

    def train(run_dir, **kwargs):
        keras.utils.set_random_seed(0)
        model = tlunet.build_model("unet", input_shape=(32, 32, 1), filters=(4, 8, 16), batchnorm=True)
        run_stages(model, stages, make_dataset(x, y, batch_size=4, seed=0), run_dir=str(run_dir), verbose=0, **kwargs)
        encoder = [l for n, l in iter_layers(model) if isinstance(l, keras.layers.BatchNormalization) and not l.trainable]
        assert encoder and len(encoder) < len([l for _, l in iter_layers(model)
                                               if isinstance(l, keras.layers.BatchNormalization)])
        saved = [(l.moving_mean.numpy().copy(), l.moving_variance.numpy().copy()) for l in encoder]
        for l in encoder:  # let a recomputation reach the frozen encoder too
            l.trainable = True
        precise_bn(model, bn_data)
        return [max(np.abs(m - l.moving_mean.numpy()).max(), np.abs(v - l.moving_variance.numpy()).max())
                for (m, v), l in zip(saved, encoder)]

    assert max(train(tmp_path / "precise", bn_data=bn_data)) < 1e-4
    assert max(train(tmp_path / "running")) > 1e-2  # the check can fail: the running averages lag


def test_stages_with_bn_data_resumed_end_with_the_statistics_of_an_uninterrupted_run(tmp_path):
    """A run stopped in its second stage and run again loads the first stage's recomputed statistics
    and recomputes the second's from the same batches (a pipeline's first pass every time), so it
    ends where the uninterrupted run ends. A stage finished before its `done.json` recorded
    `precise_bn` (an older tlunet) is recomputed when loaded."""
    x, y = _tiny_data(n=16)
    stages = [{"strategy": "all", "epochs": 1}, {"strategy": {"trainable": ["decoder", "head"]}, "epochs": 2}]

    class Stop(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    def model():
        keras.utils.set_random_seed(0)
        return tlunet.build_model("unet", input_shape=(32, 32, 1), filters=(4, 8, 16), batchnorm=True)

    def run(run_dir, **kwargs):
        m = model()
        run_stages(m, stages, make_dataset(x, y, batch_size=4, seed=0), run_dir=str(run_dir), verbose=0,
                   bn_data=make_dataset(x, y, batch_size=4, seed=1), **kwargs)
        return m

    def statistics(m):
        return [w for w in m.weights if "moving" in w.path]

    whole = run(tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "resumed", callbacks=[Stop()])
    resumed = run(tmp_path / "resumed")
    assert statistics(whole)
    for a, b in zip(statistics(whole), statistics(resumed)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)

    assert all(json.loads((tmp_path / "resumed" / d / "done.json").read_text())["precise_bn"] is True
               for d in ("stage0_all", "stage1_custom"))

    # An older tlunet recomputed once after run_stages, for one-stage runs only: a run stopped after
    # its stage finished left a done.json without the record and the running averages.
    one = stages[:1]
    old = model()
    run_stages(old, one, make_dataset(x, y, batch_size=4, seed=0), run_dir=str(tmp_path / "old"), verbose=0)
    assert "precise_bn" not in json.loads((tmp_path / "old" / "stage0_all" / "done.json").read_text())
    loaded = model()
    run_stages(loaded, one, make_dataset(x, y, batch_size=4, seed=0), run_dir=str(tmp_path / "old"), verbose=0,
               bn_data=make_dataset(x, y, batch_size=4, seed=1))
    precise_bn(old, make_dataset(x, y, batch_size=4, seed=1))
    for a, b in zip(statistics(old), statistics(loaded)):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
    assert max(np.abs(a.numpy() - b.numpy()).max() for a, b in zip(statistics(loaded), statistics(model()))) > 1e-2


@pytest.mark.slow
def test_mixed_bfloat16_trains_with_float32_output(tmp_path):
    code = textwrap.dedent('''
        import numpy as np, tlunet
        from tlunet.train import configure, compile_model
        configure(seed=0, mixed_precision="mixed_bfloat16")
        m = compile_model(tlunet.build_model("mobilenetv2_unet", input_shape=(32, 32, 1)))
        x = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
        loss = m.train_on_batch(x, (x > 0.5).astype("float32"))
        assert m.get_layer("decoder_stage0_conv1").compute_dtype == "bfloat16"
        print(m.output.dtype, np.isfinite(loss).all())
    ''')
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["float32", "True"]


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus():
    code = textwrap.dedent('''
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import tlunet
        from tlunet.data import make_dataset
        from tlunet.train import compile_model, get_distribution_strategy
        strategy = get_distribution_strategy("mirrored")
        with strategy.scope():
            m = compile_model(tlunet.build_model("unet", input_shape=(32, 32, 1), filters=(4, 8, 16, 32, 64)))
        x = (np.random.default_rng(0).random((8, 32, 32, 1)) * 255).astype("uint8")
        h = m.fit(make_dataset(x, x[..., 0] > 127, batch_size=4), epochs=1, verbose=0)
        print(strategy.num_replicas_in_sync, np.isfinite(h.history["loss"][0]))
    ''')
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["2", "True"]


def test_configure_rejects_unknown_precision():
    from tlunet.training import configure
    with pytest.raises(ValueError, match="mixed_precision"):
        configure(mixed_precision="fp8")
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.slow
def test_xla_training_step_matches_eager():
    x, y = _tiny_data(n=4)
    results = []
    for jit in (False, True):
        keras.utils.set_random_seed(0)
        model = tlunet.build_model("unet", input_shape=(32, 32, 1), filters=(4, 8, 16, 32, 64))
        compile_model(model, loss="bce_dice", jit_compile=jit, learning_rate=1e-3)
        assert model.jit_compile is jit
        loss = model.train_on_batch(x.astype("float32") / 255, y[..., None].astype("float32"))
        results.append((float(np.ravel(loss)[0]), model.get_weights()[0]))
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-4)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-4, atol=1e-6)


def test_lr_schedules_follow_their_formulas_and_are_recorded_per_epoch(tmp_path):
    from tlunet.training import check_lr_schedule, lr_at
    cosine = {"name": "cosine", "warmup_epochs": 2}
    assert [round(lr_at(cosine, e, 6, 1.0), 4) for e in range(6)] == [0.3333, 0.6667, 1.0, 0.8536, 0.5, 0.1464]
    assert lr_at("poly", 0, 10, 0.01) == 0.01 and lr_at("poly", 5, 10, 0.01) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert lr_at(None, 7, 10, 0.01) == 0.01
    with pytest.raises(ValueError, match=r"lr_schedule 'cosine' has no options \['warmup'\]"):
        check_lr_schedule({"name": "cosine", "warmup": 3})
    with pytest.raises(ValueError, match=r"lr_schedule must be one of \['constant', 'cosine', 'poly', 'plateau'\]"):
        check_lr_schedule("step")
    x, y = _tiny_data()
    ds = make_dataset(x, y, batch_size=4)
    model = compile_model(tlunet.build_model("unet", input_shape=(32, 32, 1), filters=(4, 8, 16, 32, 64)),
                          learning_rate=0.01)
    history = fit(model, ds, ds, run_dir=str(tmp_path), epochs=3, verbose=0, lr_schedule="poly")
    assert history["learning_rate"] == pytest.approx([0.01, 0.01 * (2 / 3) ** 0.9, 0.01 * (1 / 3) ** 0.9], rel=1e-5)


def test_gradient_accumulation_updates_like_the_larger_batch():
    """Two batches of 2 with 2 accumulation steps give the weights of one batch of 4 (no BatchNorm
    here, whose statistics would differ by batch)."""
    rng = np.random.default_rng(0)
    x = rng.random((4, 8, 8, 1)).astype("float32")
    y = (x > 0.5).astype("float32")

    def trained(batch, steps):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(1, 3, padding="same",
                                                                              activation="sigmoid")])
        compile_model(model, learning_rate=0.1, gradient_accumulation=steps, metrics=[])
        model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
        return model.get_weights()

    big, accumulated, plain = trained(4, 1), trained(2, 2), trained(2, 1)
    for a, b in zip(big, accumulated):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(big[0], plain[0])  # two separate updates of 2 differ
    with pytest.raises(ValueError, match=r"`gradient_accumulation` must be a whole number >= 1. Received: 0"):
        compile_model(keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)]), gradient_accumulation=0)


def test_a_plateau_schedule_without_validation_data_is_refused(tmp_path):
    x, y = _tiny_data()
    model = compile_model(tlunet.build_model("unet", input_shape=(32, 32, 1), filters=(4, 8, 16, 32, 64)))
    with pytest.raises(ValueError, match=r"plateau monitors 'val_loss' but this fit has no validation data"):
        fit(model, make_dataset(x, y, batch_size=4), None, run_dir=str(tmp_path), epochs=1, lr_schedule="plateau")


def test_set_can_give_an_option_of_a_schedule_named_by_a_string():
    from tlunet.runners.config import merge, parse_overrides
    cfg = merge({"training": {"lr_schedule": "cosine"}}, parse_overrides(["training.lr_schedule.warmup_epochs=2"]))
    assert cfg["training"]["lr_schedule"] == {"name": "cosine", "warmup_epochs": 2}


def test_fit_finds_the_epoch_clock_behind_a_users_transformations():
    import tensorflow as tf

    from tlunet.training.clock import epoch_clock as _epoch_clock
    x, y = _tiny_data()
    ds = make_dataset(x, y, batch_size=4, augment="wang2023")
    mapped = ds.map(lambda a, b: (a * 1.0, b)).take(2).prefetch(1)
    assert _epoch_clock(mapped) is ds.epoch_clock
    assert _epoch_clock(tf.data.Dataset.from_tensor_slices((x, y)).batch(4)) is None  # a user's own
    # pass k is the same batches whatever passes came before: what a resume relies on
    first = [b[0].numpy() for b in mapped]
    for _ in range(3):
        list(mapped)
    mapped_clock = _epoch_clock(mapped)
    mapped_clock.next = 0
    np.testing.assert_array_equal(np.concatenate([b[0].numpy() for b in mapped]), np.concatenate(first))


def _bn_model():
    """conv -> a nested model holding a BatchNorm -> a frozen BatchNorm."""
    inner_in = keras.Input((4, 4, 3))
    inner = keras.Model(inner_in, keras.layers.BatchNormalization(name="bn_inner")(inner_in), name="inner")
    inputs = keras.Input((4, 4, 2))
    conv = keras.layers.Conv2D(3, 1, name="conv")
    model = keras.Model(inputs, keras.layers.BatchNormalization(name="bn_frozen")(inner(conv(inputs))))
    model.get_layer("bn_frozen").trainable = False
    return model, conv


def test_precise_bn_sets_the_average_batch_statistics_and_leaves_frozen_layers():
    import tensorflow as tf
    model, conv = _bn_model()
    x = np.random.default_rng(0).normal(5.0, 2.0, (10, 4, 4, 2)).astype("float32")
    kernel = conv.kernel.numpy().copy()
    assert precise_bn(model, tf.data.Dataset.from_tensor_slices((x, x[..., :1])).batch(4)) == (1, 3)
    features = [keras.ops.convert_to_numpy(conv(x[i:i + 4])) for i in (0, 4, 8)]  # batches of 4, 4 and 2
    weights = [len(f) / len(x) for f in features]  # the short last batch counts for its 2 images
    inner = model.get_layer("inner").get_layer("bn_inner")
    np.testing.assert_allclose(inner.moving_mean.numpy(), sum(w * f.mean(axis=(0, 1, 2)) for w, f in zip(weights, features)),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(inner.moving_variance.numpy(), sum(w * f.var(axis=(0, 1, 2)) for w, f in zip(weights, features)),
                               rtol=1e-4, atol=1e-5)
    assert inner.momentum == 0.99
    frozen = model.get_layer("bn_frozen")  # a frozen BatchNorm keeps its statistics
    np.testing.assert_array_equal(frozen.moving_mean.numpy(), np.zeros(3))
    np.testing.assert_array_equal(frozen.moving_variance.numpy(), np.ones(3))
    np.testing.assert_array_equal(conv.kernel.numpy(), kernel)


def test_precise_bn_that_fails_midway_leaves_the_statistics_it_found():
    import tensorflow as tf
    model, _ = _bn_model()

    def batches():
        yield np.ones((4, 4, 4, 2), "float32")
        raise OSError("disk gone")

    with pytest.raises(Exception, match="disk gone"):
        precise_bn(model, tf.data.Dataset.from_generator(batches, output_signature=tf.TensorSpec((4, 4, 4, 2))))
    inner = model.get_layer("inner").get_layer("bn_inner")
    np.testing.assert_array_equal(inner.moving_mean.numpy(), np.zeros(3))
    assert inner.momentum == 0.99
    with pytest.raises(ValueError, match="the dataset has no batches"):
        precise_bn(model, tf.data.Dataset.from_tensor_slices(np.ones((0, 4, 4, 2), "float32")).batch(4))


def test_fit_ends_with_the_batch_statistics_of_its_final_weights(tmp_path):
    """A short fit would otherwise predict with Keras' lagging running averages (momentum 0.99)."""
    import tensorflow as tf
    x = np.random.default_rng(0).normal(5.0, 2.0, (12, 4, 4, 2)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, x[..., :1] > 5)).batch(4)
    means = {}
    for recompute in (True, False):
        keras.utils.set_random_seed(0)
        model, _ = _bn_model()
        model = keras.Model(model.input, keras.layers.Conv2D(1, 1, activation="sigmoid", name="head")(model.output))
        compile_model(model, loss="bce", learning_rate=1e-2)
        fit(model, data, run_dir=str(tmp_path / str(recompute)), epochs=2, verbose=0, recompute_bn=recompute)
        inner = model.get_layer("inner").get_layer("bn_inner")
        means[recompute] = inner.moving_mean.numpy().copy()
        if recompute:
            precise_bn(model, data)  # recomputing again changes nothing: fit already did
            np.testing.assert_allclose(inner.moving_mean.numpy(), means[True], rtol=1e-5, atol=1e-5)
    # six updates at momentum 0.99 leave the running mean near its initial 0; the batches' mean is near 5x the kernel
    assert np.abs(means[True] - means[False]).max() > 0.5


def test_fit_validates_and_keeps_the_best_epoch_with_recomputed_statistics(tmp_path):
    """Each epoch's validation and best.keras use statistics of that epoch's weights, not Keras' lagging averages."""
    import tensorflow as tf
    x = np.random.default_rng(0).normal(5.0, 2.0, (12, 4, 4, 2)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, x[..., :1] > 5)).batch(4)
    keras.utils.set_random_seed(0)
    model, _ = _bn_model()
    model = keras.Model(model.input, keras.layers.Conv2D(1, 1, activation="sigmoid", name="head")(model.output))
    compile_model(model, loss="bce", learning_rate=1e-2)
    fit(model, data, data, run_dir=str(tmp_path), epochs=2, verbose=0, patience=2)
    best = keras.models.load_model(tmp_path / "best.keras")
    saved = best.get_layer("inner").get_layer("bn_inner").moving_mean.numpy().copy()
    precise_bn(best, data)  # the statistics of best.keras's own weights
    np.testing.assert_allclose(saved, best.get_layer("inner").get_layer("bn_inner").moving_mean.numpy(), rtol=1e-4,
                               atol=1e-4)


def test_fit_reads_a_pydataset_again_and_warns_for_a_generator(tmp_path):
    x = np.random.default_rng(0).normal(5.0, 2.0, (8, 4, 4, 2)).astype("float32")

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return x[4 * i:4 * i + 4], (x[4 * i:4 * i + 4, ..., :1] > 5).astype("float32")

    model, _ = _bn_model()
    model = keras.Model(model.input, keras.layers.Conv2D(1, 1, activation="sigmoid", name="head")(model.output))
    compile_model(model, loss="bce", learning_rate=1e-2)
    fit(model, Batches(), run_dir=str(tmp_path / "py"), epochs=1, verbose=0)
    assert np.abs(model.get_layer("inner").get_layer("bn_inner").moving_mean.numpy()).max() > 0.5

    def generator():
        for i in range(2):
            yield Batches()[i]

    with pytest.warns(UserWarning, match="not recomputed from a generator, which cannot be read again"):
        fit(model, generator(), run_dir=str(tmp_path / "gen"), epochs=1, verbose=0)
