"""Experiment configs, shared by every runner: layering (defaults, the file, a profile, overrides)
and migrations, `--set` overrides, path resolution, the data a run needs, and the weights each run
starts from. The keys and their checks are the typed sections (`tlunet.runners.sections`)."""

import contextlib
import copy
import dataclasses
import io
import math
import os
from types import MappingProxyType

import yaml

import tlunet
from tlunet.resources import MAX_DEPTH, SAMPLE_PREFIX, ConfigError, load_yaml, sample_path
from tlunet.runners.schema import merge
from tlunet.runners.sections import RunSpec
from tlunet.training import get_distribution_strategy

# Keys whose `--set` value is a path: taken relative to where the command runs.
_PATH_KEYS = ("root", "encoder_weights")


def apply_profile(raw, path, defaults, profile=None, overrides=None):
    """`defaults`, then the raw config, then `profiles[profile]`, then `overrides`, each brought up to
    date by `migrate` first."""
    raw = copy.deepcopy(raw)
    profiles = raw.pop("profiles", {}) or {}
    if not isinstance(profiles, dict):
        raise ConfigError(f"{path}: `profiles` must map profile names to settings")
    if profile is not None and profile not in profiles:
        raise ConfigError(f"{path}: no profile {profile!r}; it has {sorted(profiles)}")
    task = raw.get("task", "image")
    layers = [raw, profiles.get(profile) if profile else None, overrides]
    cfg = copy.deepcopy(defaults)
    for layer in layers:
        cfg = merge(cfg, migrate(layer, task))
    return cfg


def _volume_evaluation(layer):
    """Volume configs once named their evaluation settings `inference`, with `tta` true or false."""
    if not isinstance(layer.get("inference"), dict):
        return layer
    layer = dict(layer)
    inference = dict(layer.pop("inference"))
    if isinstance(inference.get("tta"), bool):
        inference["tta"] = "flip" if inference["tta"] else None
    layer["evaluation"] = merge(inference, layer.get("evaluation"))
    return layer


# Renamed keys, oldest first: (task, what changed, layer -> layer). `migrate` applies them to every
# config layer and to the config.yaml of runs made before, so old configs load and old runs are reused.
MIGRATIONS = [("volume", "inference -> evaluation; tta true/false -> flip/null", _volume_evaluation)]


def migrate(layer, task):
    """A config layer (a file, profile, overrides or a run's saved config.yaml) with old key names
    brought up to date (`MIGRATIONS`); the layer itself is not changed."""
    if not isinstance(layer, dict):
        return layer
    for for_task, _, step in MIGRATIONS:
        if task == for_task:
            layer = step(layer)
    return layer


def distribution_scope(cfg):
    """The scope of the config's `training.distribute` strategy (None: no distribution), entered
    around building and training each model — after `start_run` has reset Keras, since resetting
    inside a strategy's scope breaks its exit."""
    name = cfg.training.distribute
    return get_distribution_strategy(name).scope() if name else contextlib.nullcontext()


def check_split_sizes(cfg, splits, subjects, where="data.split", validation=True):
    """Stops before training when a split leaves a part empty: no training or test cases in a fold,
    or no validation cases although the split asks for some."""
    split = getattr(cfg.data, "split", None)
    split = None if split is None else list(split)
    for k, parts in enumerate(splits):
        for name, idx, wanted in zip(("training", "validation", "test"), parts,
                                     (True, validation and (split is None or split[1] > 0), True)):
            if wanted and len(idx) == 0:
                fold = f" in fold {k}" if len(splits) > 1 else ""
                raise ConfigError(f"{cfg.name}: {where} {split!r} of {subjects} subjects leaves no {name} "
                                  f"cases{fold}; give that part a larger fraction, or use more data")


def resolve_precise_bn(cfg):
    """`precise_bn: null` (the default) in `training` and in the pretrain block's training becomes
    true, or false where it cannot apply: under `distribute` (it recomputes in one process) or with
    `batchnorm: freeze` (no BatchNorm layer trains). A run's config.yaml records the resolved value."""
    def wanted(t):
        return t.get("precise_bn") if t.get("precise_bn") is not None else \
            (not t.get("distribute") and t.get("batchnorm") != "freeze")
    if not isinstance(cfg.get("training"), dict):
        return  # refused, naming the section, when the config is parsed
    if isinstance(cfg.get("pretrain"), dict):  # first: it inherits the main block's unresolved value
        source = cfg["pretrain"].setdefault("training", {})
        if isinstance(source, dict):
            source["precise_bn"] = wanted(merge(cfg["training"], source))
    cfg["training"]["precise_bn"] = wanted(cfg["training"])


def resolve_path(cfg, path):
    """A config's path: `sample:NAME` is a bundled sample, `download` stays as it is (the loader
    fetches the data), a relative path is relative to the config file."""
    if path is None or path == "download":
        return path
    path = os.path.expanduser(str(path))
    if path.startswith(SAMPLE_PREFIX):
        return sample_path(path)
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(os.path.dirname(cfg.path), path))


def check_sources(cfg, blocks):
    """Stops before any work when a data folder a run needs is not there, saying how to get it.

    Args:
        blocks: {where: data block}, e.g. {"data": cfg["data"], "pretrain.data": ...}; a block's
            `get` key, if any, is the how-to in the message.
    """
    for where, d in blocks.items():
        if d.get("root") == "download" and d.get("kind") != "hc18":
            raise ConfigError(f"{cfg.name}: {where}.root `download` fetches HC18 only; {where}.kind is "
                              f"{d.get('kind')!r}: pass --data FOLDER")
        if "root" not in d or d["root"] == "download":
            continue
        root = resolve_path(cfg, d["root"])
        if root is None or not os.path.isdir(root):
            what = "is not set" if root is None else f"is {root}, which is not a folder"
            how = d.get("get") or f"pass --data FOLDER or --set {where}.root=FOLDER"
            raise ConfigError(f"{cfg.name}: {where}.root {what}. {how}")


def parse_overrides(items):
    """`["training.epochs=5", "pretrain.data.root=/data/ecssd"]` -> a nested override dict.

    Values are read as config files are (`tlunet.resources.load_yaml`: `5` is an int, `1e-4` a float,
    `[128, 192]` a list, `null` None, anything else a string); `root` and `encoder_weights` paths are
    taken relative to where the command runs.
    """
    out, seen = {}, {}
    for item in items or []:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"--set {item!r}: expected KEY.SUB=VALUE, e.g. training.epochs=5")
        if len(parts) > MAX_DEPTH:
            raise ConfigError(f"--set {item[:60]!r}...: the key has {len(parts)} parts; config keys are a few levels deep")
        try:
            value = load_yaml(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({e})") from e
        if key.strip() in seen:
            raise ConfigError(f"--set {key.strip()} is given twice ({seen[key.strip()]!r} and {item!r}); give it once")
        seen[key.strip()] = item
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is set to a value and used as a section")
        if parts[-1] in _PATH_KEYS and isinstance(value, str) and value != "download" \
                and not value.startswith(SAMPLE_PREFIX) and value not in DOWNLOADABLE_WEIGHTS:
            value = os.path.abspath(os.path.expanduser(value))
        node[parts[-1]] = value
    return out


DOWNLOADABLE_WEIGHTS = ("imagenet", "kinetics400")


def encoder_weights(requested, model_name, notes, input_shape=None):
    """(weights argument, note) for a run's encoder. When downloadable weights ("imagenet",
    "kinetics400") cannot be had (no network and no cached file), weights is None and the note starts
    with "unavailable": the run must be skipped, never trained from random weights in their place.
    `notes` caches the answer per (weights, model) so the download is tried once."""
    info = tlunet.get_model_info(model_name)
    if not info.pretrained_encoder:
        return None, "random init (no pretrained encoder)"
    if requested is None:
        return None, "random init"
    key = f"{requested}:{model_name}"
    if requested not in DOWNLOADABLE_WEIGHTS:
        if key not in notes:  # a file: it must load into this encoder before any run trains
            try:
                tlunet.build_model(model_name, input_shape=input_shape or _small_shape(info), encoder_weights=requested)
            except (ValueError, OSError) as e:
                raise ConfigError(f"encoder weights {requested}: {e}") from e
            notes[key] = (requested, f"encoder file {os.path.basename(str(requested))}")
        return notes[key]
    if key not in notes:
        try:
            # keras prints "Downloading data from ..." before it fails offline: keep that out
            with contextlib.redirect_stdout(io.StringIO()):
                tlunet.build_model(model_name, input_shape=input_shape or info.reference_shape, encoder_weights=requested)
            notes[key] = (requested, {"imagenet": "ImageNet (keras.applications)",
                                      "kinetics400": "Kinetics-400 (torchvision r3d_18)"}[requested])
        except (RuntimeError, ImportError, OSError) as e:
            notes[key] = (None, f"unavailable: {requested} weights could not be downloaded (no network?) and are "
                                f"not cached ({type(e).__name__})")
    return notes[key]


MIN_ENCODER_SIDE = 32  # keras.applications refuse smaller inputs (VGG16, MobileNetV2: "at least 32x32")


def _small_shape(info):
    """A small input shape the model and its encoder accept, to check a weights file quickly: each
    side the smallest multiple of the model's divisor that is at least `MIN_ENCODER_SIDE`."""
    div = info.divisor if isinstance(info.divisor, tuple) else (info.divisor,) * info.spatial_dims
    sides = tuple(d * math.ceil(MIN_ENCODER_SIDE / d) for d in div)
    channels = info.reference_shape[-1] if info.channels is None or info.reference_shape[-1] in info.channels else 1
    return (*sides, channels)


def with_weights_file(cfg, path):
    """`cfg` with the weights file `path` in place of every downloadable ("imagenet", "kinetics400")
    encoder_weights it names, at the top and in each run (`--encoder-weights FILE`); runs that start
    from random weights (null) or the experiment's own source are left alone."""
    def runs():
        for run in cfg.runs:
            own = dict(run.get("model") or {})
            if own.get("encoder_weights") in DOWNLOADABLE_WEIGHTS:
                run = RunSpec(run.name, MappingProxyType({**run.given, "model": {**own, "encoder_weights": path}}))
            yield run
    model = cfg.model.merged({"encoder_weights": path}) if cfg.model.encoder_weights in DOWNLOADABLE_WEIGHTS \
        else cfg.model
    return dataclasses.replace(cfg, model=model, runs=tuple(runs()))


def plan_runs(cfg, notes, input_shape=None):
    """([(run, weights, note)] that can start, [(run name, reason)] skipped for want of weights)."""
    ready, skipped = [], []
    for run in cfg.runs:
        if run.get("transfer") not in (None, "scratch") or run.get("init") == "pretrain":
            ready.append((run, None, None))  # starts from the experiment's own source model
            continue
        model = run.model(cfg.model)
        weights, note = encoder_weights(model.encoder_weights, model.name, notes, input_shape)
        (skipped.append((run.name, note)) if note.startswith("unavailable") else ready.append((run, weights, note)))
    return ready, skipped


def skip_message(cfg, skipped):
    """One paragraph: which runs were skipped for want of pretrained weights, and how to supply them."""
    names = ", ".join(name for name, _ in skipped)
    return (f"{len(skipped)} of {len(cfg.runs)} runs fine-tune a pretrained encoder whose weights cannot be "
            f"had here, and are skipped rather than run from random weights: {names}. "
            f"{skipped[0][1][len('unavailable: '):]}. To run them, give the weights file: "
            f"--encoder-weights FILE (2D: the keras.applications `..._no_top.h5`, or a `.weights.h5` saved from "
            f"keras.applications with include_top=False; 3D: torchvision's r3d_18 `.pth` or its `.npz`).")
