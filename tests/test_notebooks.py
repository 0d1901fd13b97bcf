"""The example notebooks run top to bottom, and are committed without outputs.

CI executes each notebook in a fresh kernel in smoke mode (TLUNET_NOTEBOOK_SMOKE=1, read by the
notebook's first code cell): small sizes, one epoch, and no ImageNet/Kinetics download (random
encoder weights, or a random r3d_18-layout state dict written to disk), which the notebook says in
its output. A cell that raises fails the test.
"""

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "examples").glob("*.ipynb"))
NAMES = [p.name for p in NOTEBOOKS]


def _cells(path):
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _source(path):
    return "\n".join("".join(cell["source"]) for cell in _cells(path))


def test_both_notebooks_are_there():
    assert {"quickstart.ipynb", "volume3d.ipynb"} <= set(NAMES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_committed_without_outputs(path):
    """Outputs and execution counts stay out of the repository: diffs show code, not pictures."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    dirty = [i for i, cell in enumerate(nb["cells"]) if cell["cell_type"] == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, (f"{path.name}: code cells {dirty} hold outputs or execution counts; clear them "
                       f"(e.g. `jupyter nbconvert --clear-output --inplace {path.relative_to(ROOT)}`)")
    assert "widgets" not in nb.get("metadata", {}), f"{path.name}: widget state in the metadata"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_smoke_flag_and_install_in_the_first_code_cell(path):
    first = "".join(next(c for c in _cells(path) if c["cell_type"] == "code")["source"])
    assert 'os.environ.get("TLUNET_NOTEBOOK_SMOKE") == "1"' in first
    # installs the checkout it sits in: a command that works as written, with no URL to guess
    assert 'CHECKOUT = os.path.abspath("..")' in first and '"pip", "install", "-q", CHECKOUT' in first


def test_install_instructions_name_nothing_a_user_must_guess():
    """No placeholder repository, no Colab badge for an unknown owner, no tag that does not exist."""
    tags = subprocess.run(["git", "tag", "--list"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    for path in [ROOT / "README.md", *NOTEBOOKS]:
        text = path.read_text(encoding="utf-8")
        for placeholder in ("OWNER/", "<this repository", "colab.research.google.com/github"):
            assert placeholder not in text, f"{path.name}: {placeholder}"
        for tag in re.findall(r"@(v\d+\.\d+\.\d+)", text):
            assert tag in tags, f"{path.name} installs tag {tag}, which does not exist"


def _execute(path, workdir, monkeypatch):
    import nbformat  # nbclient, nbformat and ipykernel come with the dev extra (CI installs it)
    from nbclient import NotebookClient

    monkeypatch.setenv("TLUNET_NOTEBOOK_SMOKE", "1")  # the kernel inherits this process's environment
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    # kernel "python3" runs this interpreter (jupyter_client swaps a spec's "python" for sys.executable)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    return nb, text, images


@pytest.mark.slow
def test_quickstart_runs_in_smoke_mode(tmp_path, monkeypatch):
    _, out, images = _execute(ROOT / "examples" / "quickstart.ipynb", tmp_path, monkeypatch)
    assert "smoke mode: 1 epoch(s) at 64x96" in out
    assert "encoder weights: random (smoke mode: the ImageNet download is skipped)" in out  # says what it used
    assert "after apply_strategy(model, 'decoder'): 4,405,073 trainable parameters" in out
    assert re.search(r"test Dice \d\.\d{3} on 35 scans", out), out
    assert re.search(r"SavedModel: HC measured on \d+ of 35 test scans", out), out
    assert images >= 2  # the augmented batch and the predictions with HC in mm
    assert (tmp_path / "fetal_head_savedmodel" / "saved_model.pb").is_file()
    assert (tmp_path / "runs" / "quickstart" / "history.csv").is_file()


@pytest.mark.slow
def test_volume3d_runs_in_smoke_mode(tmp_path, monkeypatch):
    _, out, images = _execute(ROOT / "examples" / "volume3d.ipynb", tmp_path, monkeypatch)
    assert "smoke mode: 3 phantoms" in out
    assert "RANDOM, in r3d_18's layout (smoke mode: no Kinetics download)" in out
    assert "matches the file" in out  # the converted stem kernel checked against the state dict
    assert re.search(r"volume \(8, 48, 48\).*lesion Dice \d\.\d{3}", out), out
    assert images >= 1  # the slice figure
    weights = "r3d_18_random.pth" if importlib.util.find_spec("torch") else "r3d_18_random.npz"
    assert (tmp_path / weights).is_file()  # the converter read a state dict from disk
