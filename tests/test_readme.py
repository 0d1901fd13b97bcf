"""The README and the user guide say what is true: their code runs and their commands parse.

- The walk-through (docs/index.md) runs as written, every cell in order (two epochs instead of thirty).
- Every other `python` block of the README and the guide runs, each page's blocks in order in one
  namespace, in a folder holding a small `my_data/` (images/ + masks/, two images per patient). A
  block that cannot run in CI carries `<!-- not run: REASON -->` on the line before it. A
  `print(...)  # 1,234` comment is checked against what the block printed.
- The README's `tlunet train` command runs on `my_data/` (a tiny U-Net for its model, one epoch at
  32x32) and writes the model where the README says.
- Every `tlunet` command line in the README, the guide and the results pages parses with the real
  argument parser, and names a shipped experiment and profile.
- The README stays short, in a fixed order, with the two set-up commands verbatim, and names no
  folder a user does not have; relative links resolve.
"""

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
WALKTHROUGH = ROOT / "docs" / "index.md"
GUIDE = sorted((ROOT / "docs" / "guide").glob("*.md"))
USER_PAGES = [README, WALKTHROUGH, *GUIDE]  # what a user reads first: short, no machine's folders
COMMAND_PAGES = [*USER_PAGES, ROOT / "CONTRIBUTING.md", ROOT / "experiments" / "README.md",
                 *sorted(ROOT.glob("experiments/*/README.md"))]
LINK_PAGES = [README, ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", *sorted(ROOT.glob("experiments/**/README.md"))]

SETUP_COMMANDS = [
    "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/tlunet experiment wang2023_fetal_head --quick",
    "bash .ci/run",
]
README_SECTIONS = ["Papers", "Install", "The main job", "Your own data", "In Python", "Learn more"]
NOT_RUN = re.compile(r"^<!-- not run: .+ -->$")
NO_NETWORK = [('encoder_weights="imagenet"', "encoder_weights=None")]  # CI has no network; the counts agree


def _blocks(page, lang):
    """[(code, runs)] of the ```lang blocks of a Markdown file (or text), in order; `runs` is False for
    a block whose fence follows a `<!-- not run: ... -->` line."""
    text = page.read_text(encoding="utf-8") if isinstance(page, Path) else page
    out, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == f"```{lang}":
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            out.append(("\n".join(lines[i + 1:end]) + "\n", not (i and NOT_RUN.match(lines[i - 1].strip()))))
            i = end
        i += 1
    return out


def _section(text, heading):
    """The text under `## heading`, up to the next `## `."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def _write_my_data(root, patients=6, per_patient=2, size=64):
    """`root/images` and `root/masks`: grey scans with a bright disk, masks 0/255, named p01_a.png, ..."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:size, :size]
    for p in range(1, patients + 1):
        for k in "ab"[:per_patient]:
            cy, cx, r = rng.integers(20, 44), rng.integers(20, 44), rng.integers(8, 16)
            mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2).astype(np.uint8) * 255
            image = np.clip(rng.normal(60, 20, (size, size)) + 0.6 * mask, 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / "images" / f"p{p:02d}_{k}.png")
            Image.fromarray(mask).save(root / "masks" / f"p{p:02d}_{k}.png")


def _run_page(code, path, tmp_path, monkeypatch, capsys):
    """Executes `code` in `tmp_path` (holding my_data/); returns what it printed."""
    _write_my_data(tmp_path / "my_data")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(path.relative_to(ROOT)), "exec"), {"__name__": path.stem})
    return capsys.readouterr().out


# ---------------------------------------------------------------------------------- the README, short and true
def test_readme_is_short_and_in_order():
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail to the guide (docs/guide/)"
    assert re.findall(r"^## (.+)$", text, re.M) == README_SECTIONS
    setup = _blocks(README, "bash")[0][0].splitlines()
    assert [line for line in setup if line and not line.startswith("#")] == SETUP_COMMANDS
    assert (ROOT / ".ci" / "run").is_file()
    papers = _section(text, "Papers")
    rows = [r for r in papers.splitlines() if r.startswith("| [")]
    assert len(rows) == 5, "one row per paper"
    for row in rows:
        target = re.search(r"\]\((experiments/[^)]+)\)", row).group(1)
        assert (ROOT / target).is_file(), target
    python = _blocks(README, "python")
    assert len(python) == 1 and len(python[0][0].strip().splitlines()) <= 5, "five lines of Python"


@pytest.mark.parametrize("path", USER_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_user_pages_name_no_machine(path):
    """A user has neither `../shared` nor "this machine"; figures say where they were measured."""
    text = path.read_text(encoding="utf-8")
    for phrase in ("../shared", "/work/", "this machine"):
        assert phrase not in text, f"{path.name} names {phrase!r}"
    assert not re.search(r"\bhere\b", text, re.I), f"{path.name} says 'here': say where, or what a user does"


def _slug(heading):
    """The anchor GitHub and mkdocs give a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("path", LINK_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # https://, mailto:
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        assert dest.exists(), f"{path.relative_to(ROOT)}: link {target} points at nothing"
        if anchor and dest.suffix == ".md":
            anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", dest.read_text(encoding="utf-8"), re.M)}
            assert anchor in anchors, f"{path.relative_to(ROOT)}: {target}: no heading with anchor #{anchor}"


# ---------------------------------------------------------------------------------- commands parse
def _command_lines(page):
    """The `tlunet ...` argument lists of the bash blocks of a page (continuations joined)."""
    commands = []
    for code, _ in _blocks(page, "bash"):
        for line in code.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|;|\|", line):
                try:
                    tokens = shlex.split(part, comments=True)
                except ValueError:
                    continue
                while tokens and re.match(r"^[A-Z_]+=", tokens[0]):  # TF_CONFIG=... tlunet train
                    tokens = tokens[1:]
                if tokens and Path(tokens[0]).name == "tlunet":
                    commands.append(tokens[1:])
    return commands


@pytest.mark.parametrize("path", COMMAND_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_command_lines_parse(path, capsys):
    from tlunet_cli import catalog
    from tlunet_cli.parser import build_parser

    names = catalog()
    parser = build_parser(names)
    for args in _command_lines(path):
        try:
            parsed = parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"{path.relative_to(ROOT)}: `tlunet {shlex.join(args)}` does not parse: "
                        f"{capsys.readouterr().err.strip().splitlines()[-1]}")
        if parsed.command == "experiment" and parsed.name and not parsed.name.endswith((".yaml", ".yml")):
            assert parsed.name in names["experiments"], f"{path.name}: no experiment {parsed.name!r}"
            profile = "quick" if parsed.quick else parsed.profile
            assert profile in (None, *names["profiles"][parsed.name]), \
                f"{path.name}: {parsed.name} has no profile {profile!r}"


# ---------------------------------------------------------------------------------- code runs
@pytest.mark.slow
def test_walkthrough_runs(tmp_path, monkeypatch, capsys):
    section = _section(WALKTHROUGH.read_text(encoding="utf-8"), "Walk-through")
    code = "\n".join(re.findall(r"```python\n(.*?)```", section, re.S))
    assert "EPOCHS, SIZE = 30, (128, 192)" in code
    code = code.replace("EPOCHS, SIZE = 30, (128, 192)", "EPOCHS, SIZE = 2, (64, 96)")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/index.md walk-through", "exec"), {"__name__": "walkthrough"})
    out = capsys.readouterr().out
    assert "6,628,945 trainable parameters" in out
    # a newcomer's short run gives a model that finds heads (fit recomputes its BatchNorm statistics)
    assert float(re.search(r"test Dice (\d\.\d+)", out).group(1)) > 0.6, out
    median = float(re.search(r"HC error on 35 test scans: median (\d+\.\d) mm", out).group(1))
    assert median < 30, out
    assert (tmp_path / "predictions.png").stat().st_size > 10_000
    assert (tmp_path / "runs" / "walkthrough" / "history.csv").is_file()
    assert (tmp_path / "fetal_head_savedmodel" / "saved_model.pb").is_file()


PYTHON_PAGES = [p for p in [README, *GUIDE] if any(runs for _, runs in _blocks(p, "python"))]


@pytest.mark.slow
@pytest.mark.parametrize("path", PYTHON_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(path, tmp_path, monkeypatch, capsys):
    code = "".join(block for block, runs in _blocks(path, "python") if runs)
    for old, new in NO_NETWORK:
        code = code.replace(old, new)
    out = _run_page(code, path, tmp_path, monkeypatch, capsys)
    for expected in re.findall(r"print\(.*\)\s+#\s*([\d,.]+)\s*$", code, re.M):
        assert expected in out, f"{path.name}: printed {out!r}, the page says {expected}"


@pytest.mark.slow
def test_readme_train_command_runs(tmp_path, monkeypatch):
    from tlunet.cli import main

    section = _section(README.read_text(encoding="utf-8"), "Your own data")
    [args] = [c for c in _command_lines(section) if c[0] == "train"]
    assert args[args.index("--data") + 1] == "my_data"
    # The README's layout, flags and output path; its model (which test_command_lines_parse checks by
    # name, and the walk-through trains) swapped for a tiny U-Net, one epoch at 32x32: seconds, not minutes.
    args[args.index("--model") + 1] = "unet"
    _write_my_data(tmp_path / "my_data")
    monkeypatch.chdir(tmp_path)
    assert main(args + ["--epochs", "1", "--image-size", "32,32", "--set", "model.filters=[4, 8, 16]"]) == 0
    model = re.search(r"The trained model is `([^`]+)`", section).group(1)
    assert (tmp_path / model).is_file(), f"README says the model is {model}"

