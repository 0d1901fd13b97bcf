"""`--kind pairs` grouped by subject: a regular expression on the file names (`subject`), so one
patient's images never fall on both sides of a split."""

import os

import numpy as np
import pytest
from PIL import Image

from tlunet.cli import main
from tlunet.data import DataError
from tlunet.data.kinds import load_image_set, subjects_of
from tlunet.data.splits import split_indices

STEMS = ["p01_a", "p01_b", "p01_c", "p02_a", "p02_b", "p03_a", "p04_a", "p04_b", "p05_a", "p06_a"]


def _pairs(root, stems=STEMS):
    for sub in ("images", "masks"):
        os.makedirs(root / sub)
    for k, stem in enumerate(stems):
        Image.fromarray(np.full((16, 16), 20 * k, np.uint8)).save(root / "images" / f"{stem}.png")
        mask = np.zeros((16, 16), np.uint8)
        mask[4:12, 4:12] = 255
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    return str(root)


def test_subject_pattern_groups_the_files_and_splits_keep_them_together(tmp_path):
    root = _pairs(tmp_path / "data")
    block = {"kind": "pairs", "root": root, "image_size": [16, 16], "channels": 1, "subject": r"^(p\d+)_"}
    *_, groups, _ = load_image_set(block, root)
    assert groups == ["p01"] * 3 + ["p02"] * 2 + ["p03"] + ["p04"] * 2 + ["p05", "p06"]
    for seed in range(5):
        parts = split_indices(len(groups), (0.5, 0.25, 0.25), seed=seed, groups=groups)
        sides = [{groups[i] for i in part} for part in parts]
        assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    *_, ungrouped, _ = load_image_set({**block, "subject": None}, root)
    assert ungrouped == STEMS
    assert subjects_of(["ct-12-slice3"], r"ct-\d+", "x") == ["ct-12"]  # no group: the whole match


def test_subject_pattern_errors_name_the_file_the_pattern_and_the_flag(tmp_path, capsys):
    root = _pairs(tmp_path / "data", STEMS[:3] + ["scan7"])
    block = {"kind": "pairs", "root": root, "image_size": [16, 16], "channels": 1, "subject": r"^(p\d+)_"}
    with pytest.raises(DataError, match=r"subject pattern '\^\(p\\\\d\+\)_' does not match the file 'scan7'"):
        load_image_set(block, root)
    with pytest.raises(ValueError, match="is not a regular expression"):
        load_image_set({**block, "subject": "(p"}, root)
    assert main(["train", "--model", "unet", "--data", root, "--kind", "hc18", "--subject", "x"]) != 0
    assert "--subject names the subjects of --kind pairs files" in capsys.readouterr().err
