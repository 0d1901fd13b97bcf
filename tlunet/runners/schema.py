"""Typed experiment configs: frozen dataclasses whose fields give each key's default and rule, and
the one parser that turns a config mapping into them, with errors naming the file and the key.

A section is a `Section` subclass: each field a key, `key(default, rule)` its default and check.
`Section.parse` refuses unknown keys (with the nearest spelling), checks each value, freezes it
(lists become tuples, mappings read-only, so a parsed config cannot change) and fills defaults;
`to_dict` gives the mapping a run's `config.yaml` holds. Keys a section accepts beyond its fields
(a data kind's own: `root`, `layout`, ...) are kept as given in `given`, absent when not given.
"""

import copy
import dataclasses
import math
import os
import numbers
from types import MappingProxyType
from typing import Any, Callable

from tlunet._suggest import did_you_mean_keys
from tlunet.resources import ConfigError


@dataclasses.dataclass(frozen=True)
class Rule:
    """A check on one key: `ok(value)`, and the phrase that follows "must be" when it fails.
    `name_value`: the message repeats the key beside the value ("Received: epochs=0"), as for numbers.
    `explain`: instead of `ok`, a function giving the whole complaint about a value, or None."""
    phrase: str = ""
    ok: Callable[[Any], bool] = None
    name_value: bool = False
    explain: Callable[[Any], Any] = None


def _whole(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _real(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


WHOLE = Rule("a whole number >= 1", lambda v: _whole(v) and v >= 1, True)
OPTIONAL_WHOLE = Rule("a whole number >= 1, or null", lambda v: v is None or (_whole(v) and v >= 1), True)
POSITIVE = Rule("a finite number > 0", lambda v: _real(v) and 0 < v < math.inf, True)
FLAG = Rule("true or false", lambda v: isinstance(v, bool))
OPTIONAL_FLAG = Rule("true or false", lambda v: v is None or isinstance(v, bool))
PROBABILITY = Rule("a number in (0, 1)", lambda v: _real(v) and 0 < v < 1)
FRACTION = Rule("a number in [0, 1]", lambda v: _real(v) and 0 <= v <= 1)
SPLIT = Rule("3 fractions >= 0 summing to 1 (train, validation, test)",
             lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(_real(x) and x >= 0 for x in v)
             and abs(sum(v) - 1) <= 1e-6)
SEEDS = Rule("a list of distinct whole numbers, or null",
             lambda v: v is None or (isinstance(v, (list, tuple)) and len(v) > 0 and len(set(v)) == len(v)
                                     and all(map(_whole, v))))
FOLDS = Rule("a whole number >= 2, or null", lambda v: v is None or (_whole(v) and v >= 2))
FRACTIONS = Rule("a list of fractions in (0, 1]",
                 lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(_real(x) and 0 < x <= 1 for x in v))


def one_of(*choices):
    """A rule: the value is one of `choices`."""
    return Rule(f"one of {list(choices)}", lambda v: v in choices)


def sizes(dims):
    """A rule: a list of `dims` whole numbers > 0 (an image or patch size)."""
    return Rule(f"a list of {dims} whole numbers > 0",
                lambda v: isinstance(v, (list, tuple)) and len(v) == dims and all(_whole(x) and x > 0 for x in v))


def key(default, check=None):
    """A section field: its default and its `Rule` (None: any value)."""
    value = frozen(default)
    if isinstance(value, MappingProxyType):  # unhashable: dataclasses take it only from a factory
        return dataclasses.field(default_factory=lambda: value, metadata={"rule": check})
    return dataclasses.field(default=value, metadata={"rule": check})


def frozen(value):
    """Lists as tuples and mappings as read-only mappings, recursively: a parsed config cannot change."""
    if isinstance(value, (list, tuple)):
        return tuple(frozen(v) for v in value)
    if isinstance(value, (dict, MappingProxyType)):
        return MappingProxyType({k: frozen(v) for k, v in value.items()})
    return value


def plain(value):
    """The YAML-ready form of a parsed value: tuples as lists, read-only mappings as dicts, sections
    as their mappings."""
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (dict, MappingProxyType)):
        return {k: plain(v) for k, v in value.items()}
    return value


def refuse(path, message):
    """A ConfigError starting with the config's path."""
    return ConfigError(f"{path}: {message}")


def check_mapping(path, where, raw):
    """`raw` is a mapping (an absent section reads as empty)."""
    if raw is None:
        return {}
    if not isinstance(raw, (dict, MappingProxyType)):
        raise refuse(path, f"`{where}` must be a mapping of keys, not {type(raw).__name__}")
    return raw


def check_known(path, where, raw, allowed):
    """ConfigError naming the unknown keys of `raw`, the nearest valid spelling and the valid ones."""
    extra = sorted(set(raw) - set(allowed))
    if extra:
        label = f"unknown {where} keys" if where else "unknown keys"
        raise refuse(path, f"{label} {extra}{did_you_mean_keys(extra, sorted(allowed))}; valid: {sorted(allowed)}")


def check_value(path, where, name, value, check):
    """ConfigError `where.name must be <phrase>. Received: ...` when `check` refuses `value`."""
    if check is not None and check.explain is not None:
        complaint = check.explain(plain(value))
        if complaint:
            raise refuse(path, f"{where + '.' if where else ''}{name}: {complaint}")
    elif check is not None and not check.ok(value):
        shown = f"{name}={value!r}" if check.name_value else repr(value)
        raise refuse(path, f"{where + '.' if where else ''}{name} must be {check.phrase}. Received: {shown}")


@dataclasses.dataclass(frozen=True)
class Section:
    """A config section: one field per key. Subclasses declare fields with `key(default, rule)`."""
    given: Any = dataclasses.field(default_factory=lambda: MappingProxyType({}), repr=False, compare=False)

    @classmethod
    def keys(cls):
        """The keys the section's fields hold."""
        return {f.name for f in dataclasses.fields(cls) if f.name != "given"}

    @classmethod
    def parse(cls, raw, path, where, extra_keys=()):
        """The section from its mapping `raw`, each value checked; ConfigError naming `where.key`."""
        raw = check_mapping(path, where, raw)
        check_known(path, where, raw, cls.keys() | set(extra_keys))
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in raw and f.name != "given":
                check_value(path, where, f.name, raw[f.name], f.metadata.get("rule"))
                values[f.name] = frozen(raw[f.name])
        optional = {k: v for k, v in raw.items() if k not in values}
        return cls(given=frozen(optional), **values)

    @classmethod
    def default_dict(cls):
        """The section's mapping when a config does not give it."""
        return cls().to_dict()

    def get(self, name, default=None):
        """The value of a key the section accepts beyond its fields, or `default` when not given."""
        return self.given.get(name, default)

    def to_dict(self):
        """The section as a config mapping: every field, then the optional keys given."""
        out = {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "given"}
        return out | plain(self.given)


def merge(base, over):
    """`base` updated by `over`, recursively for dicts (neither is changed)."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if k == "lr_schedule" and isinstance(out.get(k), str) and isinstance(v, dict):
            out[k] = {"name": out[k]}  # `cosine` then `lr_schedule.warmup_epochs=2`: the named schedule's option
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def check_folder_name(path, where, name):
    """Experiment and run names become folders under --out: a plain name only, never one that
    reaches outside it (`..`, a path separator, an absolute path)."""
    text = str(name)
    if not isinstance(name, (str, int)) or isinstance(name, bool) or text.strip() in ("", ".", "..") or \
            "/" in text or "\\" in text or "\0" in text or os.path.isabs(text) or text != text.strip():
        raise ConfigError(f"{path}: {where} {name!r} must be a plain folder name (no '/', '\\' or '..', not "
                          "absolute, no leading or trailing spaces): results are written to OUT/<name>/")
