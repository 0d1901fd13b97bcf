"""Issue 27's real-data paths on tiny shapes: Wang et al. 2020's transfer methods in the 2D image
runner (hybrid encoder included), rib-frame line labels (dense and traced) as Gare et al.'s
segmentation sources, and the classifiers' balanced accuracy and video majority vote. Fake
folders in the publishers' layouts, and real frames from ../shared/data where it is present."""

import csv
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

import tlunet
from tlunet.data import make_classification_dataset
from tlunet.data.io import read_image
from tlunet.data.kinds import load_line_set
from tlunet.data.lines import dense_to_sparse, orientations_of
from tlunet.evaluation import classification_metrics, majority_vote
from tlunet.models import build_unet
from tlunet.runners import ConfigError, config_from_dict, load_config, run_experiment

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
RIBS = ("pleural_line", "rib_line", "rib_shadow")


# ------------------------------------------------------------------ Wang et al. 2020's methods in 2D
def test_hybrid_encoder_in_2d_takes_the_source_encoder_and_a_fresh_target_one():
    keras.utils.set_random_seed(0)
    source = build_unet((32, 32, 1), 1, filters=(4, 8, 16), batchnorm=True)
    model, report = tlunet.build_transfer_model("hybrid", source, input_shape=(48, 48, 1))
    assert model.name == "hybrid_unet" and model.input_shape == (None, 48, 48, 1)
    copied = model.get_layer("encoder_source").get_layer("encoder_block1_conv1")
    np.testing.assert_array_equal(copied.get_weights()[0], source.get_layer("encoder_block1_conv1").get_weights()[0])
    fresh = model.get_layer("encoder_target").get_layer("encoder_block1_conv1")
    assert not np.array_equal(fresh.get_weights()[0], copied.get_weights()[0])
    assert len(report.copied) > 0 and model.predict(np.zeros((1, 48, 48, 1)), verbose=0).shape == (1, 48, 48, 1)


TINY_TRANSFER = {
    "name": "tinytransfer",
    "data": {"kind": "lung_us_phantom", "n": 12, "phantom_size": [64, 64], "image_size": [32, 32],
             "split": [0.5, 0.25, 0.25]},
    "model": {"name": "unet", "filters": [4, 8, 16], "batchnorm": True},
    "training": {"epochs": 1, "batch_size": 4},
    "pretrain": {"data": {"n": 8, "image_size": [16, 16]}, "training": {"epochs": 1}},
    "runs": [{"name": m, "transfer": m} for m in ("scratch", "continual", "body", "encoder", "hybrid")],
}


@pytest.mark.slow
def test_image_runner_runs_the_four_transfer_methods_from_a_source_of_another_size(tmp_path):
    cfg = config_from_dict(TINY_TRANSFER, str(tmp_path / "t.yaml"))
    rows = run_experiment(cfg, out_dir=str(tmp_path / "results"), log=lambda *a: None)
    notes = {r["run"]: r["weights"] for r in rows}
    assert notes["scratch"] == "scratch: random init"
    copied = {m: int(notes[m].split(": ")[1].split()[0]) for m in ("continual", "body", "encoder", "hybrid")}
    # continual keeps the head too, body all but the head, encoder and hybrid the encoder and bottleneck
    assert copied["continual"] > copied["body"] > copied["encoder"] == copied["hybrid"] > 0
    exp = tmp_path / "results" / "tinytransfer"
    hybrid = keras.saving.load_model(exp / "hybrid" / "model.keras")
    assert hybrid.name == "hybrid_unet" and hybrid.input_shape == (None, 32, 32, 1)  # source trained at 16x16
    summary = (exp / "summary.md").read_text()
    assert all(f"| {m} |" in summary for m in ("scratch", "continual", "body", "encoder", "hybrid"))


def test_transfer_runs_are_checked(tmp_path):
    for change, error in [({"runs": [{"name": "x", "transfer": "continuous"}]}, "transfer 'continuous' is not one of"),
                          ({"runs": [{"name": "x", "transfer": "body", "init": "pretrain"}]}, "gives both init"),
                          ({"pretrain": None, "runs": [{"name": "x", "transfer": "body"}]}, "no `pretrain` block")]:
        raw = {k: v for k, v in {**TINY_TRANSFER, **change}.items() if v is not None}
        with pytest.raises(ConfigError, match=error):
            config_from_dict(raw, str(tmp_path / "bad.yaml"))


def test_shipped_lesion_source_profile_names_the_four_methods_and_the_patches():
    cfg = load_config("wang2020_covid_ct_2d", "lesion_source")
    assert [r.get("transfer") for r in cfg.runs] == ["scratch", "continual", "body", "encoder", "hybrid"]
    assert cfg.pretrain.data.kind == "hdf5_patches" and list(cfg.pretrain.data.image_size) == [48, 48]
    assert cfg.pretrain.model.to_dict()["filters"] == cfg.model.to_dict()["filters"]  # the methods copy by width


# ------------------------------------------------------------------ line labels of rib frames
H, W = 96, 128


def _rib_masks():
    """A pleural line (rows 20-27), a rib line (rows 30-35, left half) and a rib shadow below it."""
    out = {c: np.zeros((H, W), np.uint8) for c in RIBS}
    out["pleural_line"][20:28] = 255
    out["rib_line"][30:36, 8:60] = 255
    out["rib_shadow"][36:, 8:60] = 255
    return out


def _write_ribs(root, frames):
    os.makedirs(root / "image")
    for cls in RIBS:
        os.makedirs(root / "mask" / cls)
    masks = _rib_masks()
    for k, name in enumerate(frames):
        Image.fromarray(np.full((H, W, 3), 40 + 30 * k, np.uint8)).save(root / "image" / f"{name}.jpg", quality=95)
        for cls in RIBS:
            Image.fromarray(np.stack([masks[cls]] * 3, -1)).save(root / "mask" / cls / f"{name}-{cls}.jpg", quality=95)
    return str(root)


RIB_FRAMES = ("din-01-L-1-V-frame0", "din-01-L-1-V-frame1", "man-02-R-2-V-frame0", "man-02-R-2-V-frame1")


def test_rib_frames_give_dense_and_traced_labels_at_the_model_size(tmp_path):
    root = _write_ribs(tmp_path / "ribs", RIB_FRAMES)
    block = {"kind": "lung_us_ribs", "root": root, "image_size": [48, 64], "classes": list(RIBS)}
    dense, sparse = (load_line_set(block, root, 0, kind) for kind in ("dense", "sparse"))
    assert dense.class_names == RIBS and dense.images.shape == (4, 48, 64, 1) and dense.masks.shape == (4, 48, 64)
    assert dense.groups == ["din-01-L-1-V"] * 2 + ["man-02-R-2-V"] * 2
    pleural, rib_line, shadow = (dense.masks[0] == c for c in (1, 2, 3))
    assert pleural[10:14].all() and rib_line[15:18, 4:30].all() and shadow[18:, 4:30].all()
    traced = sparse.masks[0]
    # every structure survives as a 1-pixel trace: the lines one row per column, the shadow one column per row
    assert ((traced == 1).sum(axis=0) == 1).all() and ((traced == 2).sum(axis=0)[4:30] == 1).all()
    rows = (traced == 3).sum(axis=1)
    assert (rows[18:] == 1).all() and np.flatnonzero((traced == 3)[30])[0] in (16, 17)  # the shadow's middle column
    np.testing.assert_array_equal(traced, dense_to_sparse(dense.masks[0], RIBS))


def test_line_directions_are_known_per_class():
    assert orientations_of(RIBS) == {1: "horizontal", 2: "horizontal", 3: "vertical"}
    with pytest.raises(ValueError, match=r"no line direction for class\(es\) \['ribcage'\]"):
        orientations_of(["ribcage"])


# ------------------------------------------------------------------ classification measures
def test_balanced_accuracy_weights_each_class_alike_and_videos_vote():
    labels = np.array([0, 0, 0, 0, 1, 2])
    probs = np.eye(3)[[0, 0, 0, 0, 0, 2]] * 0.8 + 0.2 / 3
    m = classification_metrics(labels, probs, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(5 / 6) and m["balanced_accuracy"] == pytest.approx((1 + 0 + 1) / 3)
    votes = majority_vote(np.array([[0.6, 0.4], [0.6, 0.4], [0.1, 0.9], [0.45, 0.55], [0.9, 0.1]]),
                          ["v", "v", "v", "w", "w"])
    assert votes == {"v": 0, "w": 0}  # v: two frames of three; w: one each, the higher mean probability wins


# ------------------------------------------------------------------ reverse transfer on rib frames and POCUS
def _write_pocus(root):
    for fold, videos in {"split0": ("a", "b"), "split1": ("c", "d")}.items():
        for k, cls in enumerate(("covid", "pneumonia", "regular")):
            for video in videos:
                folder = root / "cross_validation" / fold / cls
                os.makedirs(folder, exist_ok=True)
                for frame in range(2):
                    Image.fromarray(np.full((30, 40, 3), 50 + 60 * k + frame, np.uint8)).save(
                        folder / f"{cls}-{video}.mp4_frame{frame}.jpg")
    return str(root)


@pytest.mark.slow
def test_reverse_transfer_from_rib_frames_to_pocus_videos(tmp_path):
    ribs = _write_ribs(tmp_path / "ribs", RIB_FRAMES + ("din-02-L-1-V-frame0", "man-01-R-1-V-frame0"))
    pocus = _write_pocus(tmp_path / "pocus")
    raw = {"name": "tinyreal", "task": "classification",
           "data": {"kind": "pocus_folds", "root": pocus, "image_size": [32, 32], "split": [0.5, 0.25, 0.25]},
           "segmentation": {"data": {"kind": "lung_us_ribs", "root": ribs, "classes": list(RIBS), "image_size": [32, 32]},
                            "model": {"filters": [4, 8, 16], "batchnorm": True},
                            "training": {"epochs": 1, "batch_size": 2}},
           "classifier": {"hidden": 8}, "training": {"epochs": 1, "batch_size": 4}, "explain": {"n": 0},
           "runs": [{"name": "dense", "init": "dense"}, {"name": "sparse", "init": "sparse"},
                    {"name": "random", "init": "random"}]}
    logs = []
    rows = run_experiment(config_from_dict(raw, str(tmp_path / "c.yaml")), out_dir=str(tmp_path / "out"),
                          log=logs.append)
    assert any("dense-label segmentation on lung-US ribs" in line and "rib_shadow" in line for line in logs)
    exp = tmp_path / "out" / "tinyreal"
    for kind in ("dense", "sparse"):
        assert keras.saving.load_model(exp / f"segmentation_{kind}" / "source.keras").output_shape[-1] == 4
    random_model = keras.saving.load_model(exp / "random" / "model.keras")
    assert random_model.get_layer("head_conv").output.shape[-1] == 4  # the sources' architecture, untrained
    names = ("covid", "pneumonia", "regular")
    for row in rows:
        by_video = {}
        for p in csv.DictReader(open(exp / row["run"] / "predictions.csv")):
            by_video.setdefault(p["video"], []).append(p)
        right = []
        for frames in by_video.values():  # the vote: most frames' class; a tie goes to the higher mean probability
            counts = [sum(f["predicted"] == n for f in frames) for n in names]
            means = [np.mean([float(f[f"p_{n}"]) for f in frames]) for n in names]
            vote = max(range(3), key=lambda k: (counts[k], means[k]))
            right.append(names[vote] == frames[0]["true"])
        assert len(by_video) == row["n_test_videos"] == 3
        assert row["video_accuracy"] == pytest.approx(np.mean(right))
        metrics = json.loads((exp / row["run"] / "metrics.json").read_text())
        assert row["balanced_accuracy"] == pytest.approx(np.mean([metrics["per_class"][n]["recall"] for n in names]))
    summary = (exp / "summary.md").read_text()
    assert "balanced acc." in summary and "recall covid" in summary and "video acc. (majority)" in summary
    _served_as_trained(exp / "dense", tmp_path, names)


SERVE = """
import json, sys
import numpy as np, tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
frame = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(sys.argv[2]).convert("RGB"))
print(json.dumps({"probs": loaded.serve(tf.constant(frame[None])).numpy().tolist(),
                  "names": [n.decode() for n in loaded.class_names().numpy()]}))
"""


def _served_as_trained(run, tmp_path, names):
    """`tlunet export` of a trained classifier (the console script), then its `serve` in a fresh
    process on a uint8 RGB frame of its own size: the run's class names, and the probabilities the
    trained model gives the frame read and resized as the runner reads it."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    exe = Path(sysconfig.get_path("scripts")) / "tlunet"
    done = subprocess.run([str(exe), "export", str(run / "model.keras"), str(tmp_path / "sm")], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    frame = next((tmp_path / "pocus" / "cross_validation" / "split1" / "covid").glob("*.jpg"))
    served = subprocess.run([sys.executable, "-c", SERVE, str(tmp_path / "sm"), str(frame)], capture_output=True,
                            text=True, timeout=300, env=env)
    assert served.returncode == 0, served.stderr
    out = json.loads(served.stdout.strip().splitlines()[-1])
    assert out["names"] == list(names)
    model = keras.saving.load_model(run / "model.keras")
    (x, _), = make_classification_dataset([read_image(str(frame), channels=1)], [0], (32, 32), 1, shuffle=False)
    np.testing.assert_allclose(out["probs"], model.predict(x, verbose=0), atol=0.02)


def test_shipped_real_profile_reads_pocus_folds_and_rib_frames():
    cfg = load_config("gare2022_reverse_transfer", "real")
    assert cfg.data.kind == "pocus_folds" and cfg.segmentation.data.kind == "lung_us_ribs"
    assert list(cfg.data.image_size) == list(cfg.segmentation.data.image_size)
    assert len(cfg.sweep.seeds) >= 3 and "0.89" in cfg.paper["note"] and "no ImageNet" in cfg.paper["note"]


@pytest.mark.realdata
def test_real_rib_frames_traced_labels_keep_every_structure(tmp_path):
    real = SHARED_DATA / "lung_us_ribs"
    if not real.is_dir():
        pytest.skip(f"real data folder {real} is absent")
    frames = sorted(p.stem for p in (real / "image").glob("*.jpg"))[:13:4]  # four frames of the first clip
    root = tmp_path / "ribs"
    os.makedirs(root / "image")
    for name in frames:
        shutil.copy(real / "image" / f"{name}.jpg", root / "image")
        for cls in RIBS:
            src = real / "mask" / cls / f"{name}-{cls}.jpg"
            os.makedirs(root / "mask" / cls, exist_ok=True)
            if src.exists():
                shutil.copy(src, root / "mask" / cls)
    block = {"kind": "lung_us_ribs", "root": str(root), "image_size": [64, 64], "classes": list(RIBS)}
    dense, sparse = (load_line_set(block, str(root), 0, kind) for kind in ("dense", "sparse"))
    for d, s in zip(dense.masks, sparse.masks):
        for c in (1, 2, 3):
            assert (d == c).any() == (s == c).any()  # a traced structure is never lost to the resize
            assert (s == c).sum() <= (d == c).sum()  # a line already 1 pixel thick at 64x64 stays as it is
        assert (s == 3).sum() < (d == 3).sum() / 5  # the rib shadow, a wide band, becomes its middle column
