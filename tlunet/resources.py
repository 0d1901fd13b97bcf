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


# YAML 1.1 (PyYAML) reads `1e-4` and `1.0e4` as strings; YAML 1.2 and every other reader take them
# as floats, which is what a config author means by `learning_rate: 1e-4`.
_FLOAT = re.compile(r"""^(?:[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+
                    |[-+]?\.[0-9][0-9_]*[eE][-+]?[0-9]+)$""", re.X)
MAX_DEPTH = 64  # far beyond any config; well within Python's recursion limit while composing


class YamlKeyError(yaml.YAMLError):
    """A mapping in a YAML text gives the same key twice."""

    def __init__(self, key, first, line, name):
        where = f"lines {first} and {line}" if first != line else f"line {line}"
        super().__init__(f"key {key!r} is given twice in one mapping ({where}); YAML would keep only the last: "
                         "remove one")
        self.key, self.first, self.line, self.name = key, first, line, name


class YamlDepthError(yaml.YAMLError):
    """A YAML text nests collections deeper than `MAX_DEPTH`."""

    def __init__(self, line):
        super().__init__(f"nested more than {MAX_DEPTH} levels deep (at line {line}); a config is a few levels of "
                         "mappings and lists")
        self.line = line


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with floats read as YAML 1.2 does (`1e-4`), and a duplicate key or
    runaway nesting raised as an error (`YamlKeyError`, `YamlDepthError`) instead of the last key
    winning silently or a RecursionError."""

    _depth = 0

    def compose_node(self, parent, index):
        """The next node, as PyYAML composes it; YamlDepthError past `MAX_DEPTH` levels."""
        if self._depth >= MAX_DEPTH:
            raise YamlDepthError(self.peek_event().start_mark.line + 1)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        """The dict of a mapping node, as PyYAML builds it; YamlKeyError if it repeats a key."""
        lines = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` keys are meant to be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                repeated = key in lines
            except TypeError:  # an unhashable key: the base class names it
                continue
            if repeated:
                raise YamlKeyError(key, lines[key], line, key_node.start_mark.name)
            lines[key] = line
        return super().construct_mapping(node, deep)


ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def load_yaml(text):
    """`text` (a string or an open file) read with `ConfigLoader`; its errors are `yaml.YAMLError`s."""
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - a SafeLoader


def read_config(path):
    """The YAML mapping in `path` (read by `load_yaml`); ConfigError naming the file (and the key and
    line) if it is not valid YAML, repeats a key, nests too deeply, or is not a mapping."""
    try:
        with open(path) as f:
            raw = load_yaml(f)
    except (YamlKeyError, YamlDepthError) as e:
        raise ConfigError(f"{path}: {e}") from None
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
