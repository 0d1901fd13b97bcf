"""What ships inside the installed package: the papers' experiment configs and the bundled samples.

In the source tree they are the top-level `experiments/` and `data/` folders; setup.py installs them
as the packages `tlunet.experiments` and `tlunet.sample_data`, so they are found the same way
(`importlib.resources`) from an editable checkout, a wheel, or Colab's `pip install git+...`.
"""

import importlib.resources
import os
import re

import yaml

from tlunet._suggest import did_you_mean

SAMPLE_PREFIX = "sample:"


class ConfigError(ValueError):
    """A bad experiment config or override; the message names the file and the key."""


def _folder(package):
    return importlib.resources.files(package)


def list_experiments():
    """{name: one-line description} of the experiments that ship with tlunet."""
    out = {}
    for entry in sorted(_folder("tlunet.experiments").iterdir(), key=lambda p: p.name):
        config = entry / "config.yaml"
        if entry.is_dir() and config.is_file():
            header = []  # the opening comment, up to its first full stop
            with config.open() as f:
                for line in f:
                    if not line.startswith("#"):
                        break
                    header.append(line.lstrip("# ").strip())
            text = " ".join(header)
            end = re.search(r"(?<! al)\.(\s|$)", text)  # not the "." of "et al."
            out[entry.name] = text[:end.start() + 1] if end else text
    return out


def find_config(name_or_path):
    """The config file of an experiment: a path to a YAML file, or the name of a shipped experiment.

    Raises:
        ConfigError: neither a file nor a known name (the message lists the known names).
    """
    if os.path.isfile(name_or_path):
        return os.path.abspath(name_or_path)
    if os.sep not in name_or_path and not name_or_path.endswith((".yaml", ".yml")):
        config = _folder("tlunet.experiments") / name_or_path / "config.yaml"
        if config.is_file():
            return os.fspath(config)
    known = sorted(list_experiments())
    # A path (with a separator or .yaml) is a missing file, not a misspelt experiment name.
    is_path = os.sep in name_or_path or name_or_path.endswith((".yaml", ".yml"))
    hint = "" if is_path else did_you_mean(name_or_path, known)
    raise ConfigError(f"No experiment {name_or_path!r}{hint}: not a config file, nor one of {known} "
                      "(`tlunet experiment --list` describes them)")


def read_config(path):
    """The YAML mapping in `path`; ConfigError naming the file if it is not valid YAML or not a mapping."""
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: an experiment config is a mapping of keys (name, data, model, ...); "
                          f"this file holds a {type(raw).__name__}")
    return raw


def list_samples():
    """Names of the data samples bundled with tlunet (each has a README with its source and licence)."""
    return sorted(p.name for p in _folder("tlunet.sample_data").iterdir()
                  if p.is_dir() and (p / "README.md").is_file())


def sample_path(name):
    """Path of a bundled sample, e.g. `sample_path("hc18_small")` (HC18 in the official layout).

    Config files name it as `root: sample:hc18_small`.
    """
    name = name[len(SAMPLE_PREFIX):] if name.startswith(SAMPLE_PREFIX) else name
    if name not in list_samples():
        raise ConfigError(f"No bundled sample {name!r}{did_you_mean(name, list_samples())}; tlunet ships "
                          f"{list_samples()}")
    return os.fspath(_folder("tlunet.sample_data") / name)
