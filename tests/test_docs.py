"""The site builds (`mkdocs build --strict`: walk-through, user guide, results pages, API reference),
every public name the reference documents has a docstring, and the version is written in one place."""

import dataclasses
import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tlunet

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs" / "reference").glob("*.md"))
# The modules the reference documents, read from its pages (`::: tlunet.module` lines).
MODULES = sorted({m for page in PAGES for m in re.findall(r"^::: ([\w.]+)\s*$", page.read_text(), re.M)})


def test_reference_covers_the_public_modules():
    required = {"tlunet.models", "tlunet.finetune", "tlunet.data", "tlunet.evaluation", "tlunet.biometry",
                "tlunet.export", "tlunet.runners"}
    assert required <= set(MODULES), f"no reference page for {sorted(required - set(MODULES))}"


def _public_names(module):
    """`__all__`, or the functions and classes the module defines whose names do not start with _."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [n for n, o in vars(module).items() if not n.startswith("_") and (inspect.isfunction(o) or inspect.isclass(o))
            and o.__module__ == module.__name__]


def _own_docstring(obj, name):
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj) and doc and doc.startswith(f"{name}("):
        return None  # the signature dataclasses write in when a class has no docstring
    return (doc or "").strip()


def _undocumented(module):
    missing = []
    for name in _public_names(module):
        obj = getattr(module, name)
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue  # constants (presets, URLs) cannot carry a docstring
        if not _own_docstring(obj, name):
            missing.append(name)
        if inspect.isclass(obj):
            for attr, value in vars(obj).items():
                if attr.startswith("_"):
                    continue
                func = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
                # getdoc: an override of a documented base-class method (Keras' call, get_config) inherits its doc
                if inspect.isfunction(func) and not (func.__doc__ or inspect.getdoc(getattr(obj, attr))):
                    missing.append(f"{name}.{attr}")
    return missing


@pytest.mark.parametrize("module_name", MODULES)
def test_public_names_have_docstrings(module_name):
    module = importlib.import_module(module_name)
    assert (module.__doc__ or "").strip(), f"{module_name} has no module docstring"
    missing = _undocumented(module)
    assert not missing, f"{module_name}: public names without a docstring: {', '.join(missing)}"


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    """A docstring griffe cannot parse, a page naming a module that is gone, a link to a page or heading
    that is gone, or an experiment README a results page includes that was moved: each is a warning,
    and --strict makes it an error."""
    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                             "-d", str(site)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    index = (site / "index.html").read_text(encoding="utf-8")
    assert "A fetal-head segmenter" in index and "fetal_head_savedmodel" in index  # the walk-through
    for page in sorted((ROOT / "docs" / "guide").glob("*.md")):
        assert (site / "guide" / page.stem / "index.html").is_file(), f"guide page {page.name} not built"
    for readme in sorted(ROOT.glob("experiments/*/README.md")):  # every results page, included whole
        built = (site / "results" / readme.parent.name / "index.html")
        assert built.is_file(), f"no results page for {readme.parent.name} (docs/results/, mkdocs.yml nav)"
        title = readme.read_text(encoding="utf-8").splitlines()[0].lstrip("# ").split(" — ")[0]
        assert title.split()[0] in built.read_text(encoding="utf-8"), f"{built}: not {readme} included"
    changelog = (site / "changelog" / "index.html").read_text(encoding="utf-8")
    assert "Unreleased" in changelog  # CHANGELOG.md, included
    finetune = (site / "reference" / "finetune" / "index.html").read_text(encoding="utf-8")
    assert 'id="tlunet.finetune.apply_strategy"' in finetune
    data = (site / "reference" / "data" / "index.html").read_text(encoding="utf-8")
    assert 'id="tlunet.data.make_dataset"' in data  # names a package re-exports in __all__ are documented


def test_version_is_written_once():
    """tlunet/_version.py holds it; setup.py and `tlunet --version` read that file."""
    text = (ROOT / "tlunet" / "_version.py").read_text()
    version = re.search(r'^__version__ = "([^"]+)"$', text, re.M).group(1)
    assert tlunet.__version__ == version
    setup = (ROOT / "setup.py").read_text()
    assert not re.search(r"version\s*=\s*['\"]", setup), "setup.py writes a version of its own"
    assert "_version.py" in setup
    result = subprocess.run([sys.executable, "setup.py", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.strip().splitlines()[-1] == version, result.stderr
    assert f"tlunet {version}" == subprocess.run([sys.executable, "-c", "import tlunet_cli; print('tlunet', "
                                                 "tlunet_cli.version())"], capture_output=True, text=True).stdout.strip()


def test_no_page_of_the_site_is_ignored_by_git():
    """A page the nav names but .gitignore hides builds on the maintainer's checkout and is missing
    from every clone: the strict build fails in CI only."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (an sdist or a wheel): nothing can be ignored")
    pages = [str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*") if p.is_file()]
    pages += [f"docs/{m}" for m in re.findall(r":\s*([\w/.-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M)]
    result = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], input="\n".join(sorted(set(pages))),
                            text=True, capture_output=True, cwd=ROOT)
    assert result.returncode in (0, 1), result.stderr  # 1: nothing ignored
    assert result.stdout.split() == [], f"ignored by .gitignore, so missing from a clone: {result.stdout.split()}"
