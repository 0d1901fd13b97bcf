"""Reverse transfer: a segmentation U-Net turned into a classifier (tlunet.models.seg_to_classifier)."""

import keras
import numpy as np
import pytest

from tlunet.models import build_model, seg_to_classifier, segmentation_branch


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
