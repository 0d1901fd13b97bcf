"""benchmarks/peers.py (tlunet vs PyTorch peers) runs end to end at its tiniest shapes and prints
its table with a finite, positive ratio. Needs the `bench` extra (torch, MONAI, smp), which CI's
`dev` install does not carry: skipped with the reason without it."""

import importlib.util
import math
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MISSING = [m for m in ("torch", "monai", "segmentation_models_pytorch") if importlib.util.find_spec(m) is None]


@pytest.mark.slow
@pytest.mark.skipif(bool(MISSING), reason=f"needs `pip install -e .[bench]` (missing: {', '.join(MISSING)})")
def test_peers_quick_train2d_prints_a_ratio():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "peers.py"), "--quick", "--only", "train2d",
                          "--pairs", "mobilenetv2", "--rounds", "1"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| mobilenetv2_unet |")]
    assert len(rows) == 1, out.stdout
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    ratio = float(re.sub(r"[*]", "", cells[4]))
    assert math.isfinite(ratio) and ratio > 0
    # same architecture on both sides: smp Unet("mobilenet_v2") and tlunet's mobilenetv2_unet
    assert cells[5] == cells[6], rows[0]  # forward GFLOPs per image
    assert cells[8] == cells[9], rows[0]  # trainable parameters
    assert "PyTorch intra-op 2" in out.stdout and "TensorFlow intra-op 2" in out.stdout
