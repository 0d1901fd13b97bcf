"""Reverse transfer (Gare et al. 2022): dense/sparse line labels, seg_to_classifier, Grad-CAM,
classification metrics."""

import keras
import numpy as np
import pytest
from scipy import ndimage

from tlunet import evaluation as ev
from tlunet.data.lines import convert_labels, dense_to_sparse, sparse_to_dense
from tlunet.data.phantoms import lung_ultrasound
from tlunet.explain import explain_figure, grad_cam
from tlunet.models import build_model, seg_to_classifier, segmentation_branch


def _frames():
    """Frames whose B-line bands do not touch (touching bands are one region in dense labels, so
    no conversion can split them again - see the last test of this group)."""
    return [lung_ultrasound((128, 128), n_b_lines=b, pleural_irregularity=irr, seed=s)
            for s, (b, irr) in enumerate([(0, 0.0), (3, 0.8), (2, 0.3), (0, 0.5)])]


def test_dense_to_sparse_recovers_the_annotated_lines():
    for f in _frames():
        sparse = dense_to_sparse(f["dense"])
        for c in np.unique(f["sparse"])[1:]:
            truth = f["sparse"] == c
            # every traced line pixel lies within 1 px of the phantom's own line annotation
            near = ndimage.binary_dilation(truth, np.ones((3, 3)))
            assert (sparse == c).sum() > 0.5 * truth.sum()
            assert np.mean(near[sparse == c]) > 0.95, f"class {c}"


def test_sparse_to_dense_regrows_the_regions():
    for f in _frames():
        dense = sparse_to_dense(f["sparse"])
        for c in np.unique(f["dense"])[1:]:
            assert ev.dice(dense == c, f["dense"] == c) > 0.75, f"class {c}"
    # round trip dense -> sparse -> dense stays close to the original
    f = _frames()[1]
    back = convert_labels(convert_labels(f["dense"], "sparse"), "dense")
    assert ev.dice(back > 0, f["dense"] > 0) > 0.8


def test_touching_b_line_bands_become_one_line():
    dense = np.zeros((40, 40), np.uint8)
    dense[10:, 10:15] = 3
    dense[10:, 15:20] = 3  # two 5-px comet tails side by side
    sparse = dense_to_sparse(dense)
    assert np.unique(np.nonzero(sparse == 3)[1]).tolist() == [14]


def test_label_conversion_rejects_bad_input():
    with pytest.raises(ValueError, match="class indices 0-3"):
        dense_to_sparse(np.full((8, 8), 7))
    with pytest.raises(ValueError, match="2-D"):
        sparse_to_dense(np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="`to`"):
        convert_labels(np.zeros((8, 8)), "thin")


def _seg(seed=0):
    keras.utils.set_random_seed(seed)
    return build_model("unet", input_shape=(32, 32, 1), classes=4, filters=(4, 8, 16))


@pytest.mark.parametrize("inputs", ["maps", "features", "both"])
def test_classifier_keeps_the_segmentation_weights_and_leaves_the_source_alone(inputs):
    seg = _seg()
    before = [w.copy() for w in seg.get_weights()]
    clf = seg_to_classifier(seg, 3, inputs=inputs, hidden=8)
    assert clf.output_shape == (None, 3)
    for name in ("encoder_block1_conv1", "decoder_stage1_conv2"):
        for a, b in zip(clf.get_layer(name).get_weights(), seg.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).random((2, 32, 32, 1)).astype("float32")
    if inputs == "features":  # the segmentation head is not used, so it is not part of the model
        with pytest.raises(ValueError, match="no segmentation head"):
            segmentation_branch(clf)
    else:  # its segmentation branch computes exactly the source model's maps
        np.testing.assert_allclose(segmentation_branch(clf).predict(x, verbose=0), seg.predict(x, verbose=0),
                                   rtol=1e-5)
    clf.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    clf.fit(x, np.array([0, 2]), epochs=2, verbose=0)
    assert not np.array_equal(clf.get_layer("encoder_block1_conv1").get_weights()[0], before[0])
    assert all(np.array_equal(a, b) for a, b in zip(seg.get_weights(), before))  # source untouched


def test_random_baseline_has_the_same_architecture_but_not_the_weights():
    seg = _seg()
    pre, rnd = seg_to_classifier(seg, 3), seg_to_classifier(seg, 3, weights="random")
    assert [l.name for l in pre.layers] == [l.name for l in rnd.layers]
    assert pre.count_params() == rnd.count_params()
    assert not np.array_equal(rnd.get_layer("encoder_block1_conv1").get_weights()[0],
                              seg.get_layer("encoder_block1_conv1").get_weights()[0])


def test_classifier_round_trips_and_freezes_by_group(tmp_path):
    from tlunet.finetune import apply_strategy, trainable_params
    clf = seg_to_classifier(_seg(), 3, hidden=8)
    clf.save(tmp_path / "clf.keras")
    loaded = keras.models.load_model(tmp_path / "clf.keras")
    x = np.random.default_rng(1).random((1, 32, 32, 1)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), clf.predict(x, verbose=0), rtol=1e-5)
    apply_strategy(clf, "frozen_encoder")
    assert not clf.get_layer("encoder_block1_conv1").trainable and clf.get_layer("classifier_dense").trainable
    assert 0 < trainable_params(clf) < clf.count_params()


def test_bad_classifier_arguments():
    seg = _seg()
    with pytest.raises(ValueError, match="inputs"):
        seg_to_classifier(seg, 3, inputs="logits")
    with pytest.raises(ValueError, match="classes"):
        seg_to_classifier(seg, 1)
    plain = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 1)])
    with pytest.raises(ValueError, match="head_conv"):
        seg_to_classifier(plain, 3)


def test_grad_cam_points_at_the_evidence(tmp_path):
    """Two feature channels, one seeing the left half of the frame and one the right; class 1's
    logit is the mean of the right channel, class 0's of the left. Grad-CAM of class 1 must light
    the right half and nothing of the left, and the reverse for class 0."""
    left = np.zeros((1, 16, 16, 1), "float32")
    left[:, :, :8] = 1.0
    inputs = keras.Input((16, 16, 1))
    feats = keras.layers.Lambda(lambda t: keras.ops.concatenate([t * left, t * (1 - left)], axis=-1),
                                name="features")(inputs)
    logits = keras.layers.GlobalAveragePooling2D()(feats)
    model = keras.Model(inputs, keras.layers.Softmax()(logits))
    image = np.random.default_rng(0).uniform(0.5, 1.0, (16, 16, 1)).astype("float32")
    cam, cls, probs = grad_cam(model, image, class_index=1, layer="features")
    assert cls == 1 and probs.shape == (2,)
    assert cam[:, 8:].min() > 0.4 and cam[:, :8].max() == 0.0
    cam0, _, _ = grad_cam(model, image, class_index=0, layer="features")
    assert cam0[:, :8].min() > 0.4 and cam0[:, 8:].max() == 0.0


def test_explain_figure_writes_png(tmp_path):
    clf = seg_to_classifier(_seg(), 3, hidden=8)
    frame = lung_ultrasound((32, 32), n_b_lines=2, seed=0)["image"][..., None].astype("float32") / 255
    out = explain_figure(clf, frame, str(tmp_path / "why.png"), ["covid", "pneumonia", "regular"], true_label=0)
    assert out["predicted"] in ("covid", "pneumonia", "regular") and 0 <= out["probability"] <= 1
    assert (tmp_path / "why.png").stat().st_size > 5000


def test_classification_metrics_against_hand_counts():
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([[.8, .1, .1], [.3, .6, .1], [.2, .7, .1], [.1, .8, .1], [.1, .1, .8], [.5, .2, .3]])
    m = ev.classification_metrics(y, probs, ["covid", "pneumonia", "regular"])
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"]["pneumonia"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["regular"]["recall"] == pytest.approx(0.5)
    assert m["per_class"]["covid"]["f1"] == pytest.approx(0.5)
    # AUC of "covid": positives score .8,.3; negatives .2,.1,.1,.5 -> pairs won 4 + 3 of 8
    assert m["per_class"]["covid"]["auc"] == pytest.approx(7 / 8)
    perfect = ev.classification_metrics(y, np.eye(3)[y])
    assert perfect["macro_auc"] == 1.0 and perfect["macro_f1"] == 1.0
    with pytest.raises(ValueError, match="labels"):
        ev.classification_metrics([0, 5], np.eye(3)[:2])
    # a class missing from the test labels is not counted as a failure in the macro means
    absent = ev.classification_metrics([0, 1, 1], np.eye(3)[[0, 1, 1]])
    assert np.isnan(absent["per_class"]["2"]["f1"]) and absent["macro_f1"] == 1.0


TINY_CLS = {
    "name": "tinycls",
    "task": "classification",
    "data": {"kind": "lung_us_videos", "n_videos": 3, "frames_per_video": 2, "phantom_size": [64, 64],
             "image_size": [32, 32], "split": [0.34, 0.33, 0.33]},
    "segmentation": {"data": {"n": 12, "phantom_size": [64, 64], "image_size": [32, 32]},
                     "model": {"filters": [4, 8, 16]}, "training": {"epochs": 1, "batch_size": 4}},
    "classifier": {"hidden": 8},
    "training": {"epochs": 1, "batch_size": 4},
    "explain": {"n": 2},
    "runs": [{"name": "dense", "init": "dense"}, {"name": "sparse", "init": "sparse"},
             {"name": "scratch", "init": "random"}],
}


@pytest.mark.slow
def test_reverse_transfer_runner_end_to_end(tmp_path):
    import json

    from tlunet.experiment import config_from_dict, run_experiment
    cfg = config_from_dict(TINY_CLS, str(tmp_path / "cls.yaml"))
    rows = run_experiment(cfg, out_dir=str(tmp_path / "results"), log=lambda *a: None)
    assert [r["init"] for r in rows] == ["dense", "sparse", "random"]
    assert all(0 <= r["accuracy"] <= 1 and r["n_test_videos"] >= 3 for r in rows)
    exp = tmp_path / "results" / "tinycls"
    for kind in ("dense", "sparse"):
        assert (exp / f"segmentation_{kind}" / "model.keras").exists()
    run = exp / "dense"
    m = json.loads((run / "metrics.json").read_text())
    assert sum(map(sum, m["confusion"])) == rows[0]["n_test_frames"]
    assert (run / "figures" / "confusion.png").exists()
    assert len(list((run / "figures").glob("explain_*.png"))) == 2
    preds = (run / "predictions.csv").read_text().splitlines()
    assert len(preds) == rows[0]["n_test_frames"] + 1 and "p_covid" in preds[0]
    # test videos are whole: no video has frames in training too
    import csv
    test_videos = {r["video"] for r in csv.DictReader(open(run / "predictions.csv"))}
    assert len(test_videos) == rows[0]["n_test_videos"]
    logs = []
    run_experiment(cfg, out_dir=str(tmp_path / "results"), log=logs.append)
    assert sum("skipped" in line for line in logs) == 3


def test_video_split_is_stratified_and_grouped():
    from tlunet.experiment_cls import stratified_video_split
    labels = np.repeat([0, 1, 2], 20)
    groups = [f"v{i // 4}" for i in range(60)]  # 4 frames per video, 5 videos per class
    train, val, test = stratified_video_split(labels, groups, (0.6, 0.2, 0.2), seed=3)
    assert sorted(train + val + test) == list(range(60))
    for part in (train, val, test):
        assert set(labels[part]) == {0, 1, 2}
    assert not {groups[i] for i in train} & {groups[i] for i in test}


def test_phantom_videos_follow_the_class_rule():
    from tlunet.experiment_cls import phantom_videos
    frames, labels, groups = phantom_videos(["covid", "pneumonia", "regular"], 2, 3, (64, 64), seed=0)
    assert len(frames) == 18 and np.bincount(labels).tolist() == [6, 6, 6]
    assert all(g.startswith(["covid", "pneumonia", "regular"][y]) for g, y in zip(groups, labels))
    with pytest.raises(ValueError, match="only knows classes"):
        phantom_videos(["covid", "viral"], 1, 1, (64, 64))


def test_shipped_reverse_transfer_config_and_bad_configs(tmp_path):
    from tlunet.experiment import ConfigError, config_from_dict, load_config
    for profile in (None, "quick", "full"):
        cfg = load_config("gare2022_reverse_transfer", profile)
        assert {r["init"] for r in cfg["runs"]} == {"dense", "sparse", "random"}
    assert load_config("gare2022_reverse_transfer", "full")["data"]["kind"] == "class_folders"
    for change, error in [({"runs": [{"name": "x", "init": "imagenet"}]}, "init must be one of"),
                          ({"data": {**TINY_CLS["data"], "kind": "dicom"}}, "data.kind"),
                          ({"classifier": {"inputs": "logits"}}, "classifier.inputs"),
                          ({"training": {"epochz": 1}}, "unknown training keys")]:
        with pytest.raises(ConfigError, match=error):
            config_from_dict({**TINY_CLS, **change}, str(tmp_path / "bad.yaml"))
