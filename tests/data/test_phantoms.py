"""Synthetic phantoms (tlunet.data.phantoms)."""

import numpy as np
import pytest

from tlunet.data.phantoms import phantom_videos


def test_phantom_videos_follow_the_class_rule():
    frames, labels, groups = phantom_videos(["covid", "pneumonia", "regular"], 2, 3, (64, 64), seed=0)
    assert len(frames) == 18 and np.bincount(labels).tolist() == [6, 6, 6]
    assert all(g.startswith(["covid", "pneumonia", "regular"][y]) for g, y in zip(groups, labels))
    with pytest.raises(ValueError, match="only knows classes"):
        phantom_videos(["covid", "viral"], 1, 1, (64, 64))
