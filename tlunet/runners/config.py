"""Experiment configs, shared by every runner: layering (defaults, the file, a profile, overrides),
key checking, path resolution, the data a run needs, and the weights each run starts from."""

import contextlib
import copy
import inspect
import io
import math
import numbers
import os

import yaml

import tlunet
from tlunet._suggest import did_you_mean_keys
from tlunet.finetune import get_strategy
from tlunet.train import DISTRIBUTE, check_lr_schedule, get_distribution_strategy
from tlunet.resources import MAX_DEPTH, SAMPLE_PREFIX, ConfigError, load_yaml, sample_path

# Keys every config may have at the top level, whatever its task.
COMMON_KEYS = {"name", "task", "seed", "deterministic", "runs", "paper", "profile", "_config_path", "description"}
_PATH_KEYS = ("root", "encoder_weights")


def merge(base, over):
    """`base` updated by `over`, recursively for dicts (neither is changed)."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if k == "lr_schedule" and isinstance(out.get(k), str) and isinstance(v, dict):
            out[k] = {"name": out[k]}  # `cosine` then `lr_schedule.warmup_epochs=2`: the named schedule's option
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def apply_profile(raw, path, defaults, profile=None, overrides=None):
    """`defaults`, then the raw config, then `profiles[profile]`, then `overrides`; records the profile
    and the config path."""
    raw = copy.deepcopy(raw)
    profiles = raw.pop("profiles", {}) or {}
    if not isinstance(profiles, dict):
        raise ConfigError(f"{path}: `profiles` must map profile names to settings")
    if profile is not None and profile not in profiles:
        raise ConfigError(f"{path}: no profile {profile!r}; it has {sorted(profiles)}")
    cfg = merge(merge(merge(defaults, raw), profiles.get(profile) if profile else None), overrides)
    cfg["profile"] = profile or "default"
    cfg["_config_path"] = path
    return cfg


def check_keys(cfg, path, top_keys, sections):
    """ConfigError naming the key for an unknown top-level key, or an unknown key in a section.

    Args:
        top_keys: the task's top-level keys (COMMON_KEYS are always allowed).
        sections: {where: (dict, allowed keys)}, e.g. {"training": (cfg["training"], {...})}.
    """
    valid = COMMON_KEYS | set(top_keys)
    unknown = sorted(set(cfg) - valid)
    if unknown:
        shown = sorted(k for k in valid if k[0] != '_')  # internal keys are neither listed nor suggested
        raise ConfigError(f"{path}: unknown keys {unknown}{did_you_mean_keys(unknown, shown)}; valid: {shown}")
    for where, (section, allowed) in sections.items():
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: `{where}` must be a mapping of keys, not {type(section).__name__}")
        extra = sorted(set(section) - set(allowed))
        if extra:
            raise ConfigError(f"{path}: unknown {where} keys {extra}{did_you_mean_keys(extra, allowed)}; "
                              f"valid: {sorted(allowed)}")
    if not cfg.get("name"):
        raise ConfigError(f"{path}: missing `name`")
    check_folder_name(path, "name", cfg["name"])
    runs = cfg.get("runs")
    if not isinstance(runs, list) or not runs:
        raise ConfigError(f"{path}: `runs` must be a non-empty list of runs ({{name: ..., ...}}); got "
                          f"{type(runs).__name__}")
    for run in runs:
        if not isinstance(run, dict) or not run.get("name"):
            raise ConfigError(f"{path}: every entry of `runs` needs a `name`; got {run!r}")
        check_folder_name(path, f"run name", run["name"])
    names = [str(r["name"]) for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: run names must differ (each is a folder); repeated: "
                          f"{sorted({n for n in names if names.count(n) > 1})}")


def check_folder_name(path, where, name):
    """Experiment and run names become folders under --out: a plain name only, never one that
    reaches outside it (`..`, a path separator, an absolute path)."""
    text = str(name)
    if not isinstance(name, (str, int)) or isinstance(name, bool) or text.strip() in ("", ".", "..") or \
            "/" in text or "\\" in text or "\0" in text or os.path.isabs(text) or text != text.strip():
        raise ConfigError(f"{path}: {where} {name!r} must be a plain folder name (no '/', '\\' or '..', not "
                          "absolute, no leading or trailing spaces): results are written to OUT/<name>/")


def stages(cfg, run):
    """A run's training stages, each {strategy, epochs, learning_rate} (the training block's by default)."""
    t = cfg["training"]
    base = {"epochs": t["epochs"], "learning_rate": t["learning_rate"], "lr_schedule": t.get("lr_schedule")}
    if "stages" in run:
        return [{**base, **s} for s in run["stages"]]
    return [{"strategy": run.get("strategy", "all"), **base}]


def check_model(mcfg, path, where):
    """The model block names a registered model and only options its builder takes."""
    if not isinstance(mcfg, dict) or "name" not in mcfg:
        raise ConfigError(f"{path}: {where} must be a mapping with a `name`")
    try:
        info = tlunet.get_model_info(mcfg["name"])
    except ValueError as e:
        raise ConfigError(f"{path}: {where}: {e}") from e
    allowed = set(inspect.signature(info.builder).parameters) - {"input_shape"}
    if not info.pretrained_encoder and mcfg.get("encoder_weights") is not None:
        raise ConfigError(f"{path}: {where}: {mcfg['name']} has no pretrained encoder; "
                          f"encoder_weights must be null. Received: {mcfg['encoder_weights']!r}")
    unknown = sorted(set(mcfg) - allowed - {"name", "encoder_weights"})
    if unknown:
        hint = did_you_mean_keys(unknown, allowed | {"encoder_weights"})  # `encoder_weigths` is a common slip
        raise ConfigError(f"{path}: unknown {where} keys {unknown}{hint} for {mcfg['name']}; valid: {sorted(allowed)}")


def check_numbers(path, section, where, positive_ints=(), positive_numbers=(), optional_ints=()):
    """Training settings are numbers of the right kind: epochs and batch sizes whole and positive,
    learning rates positive, patience a whole number or null; and a known `lr_schedule`."""
    if "lr_schedule" in section:
        check_schedule(path, f"{where}.lr_schedule", section["lr_schedule"])
    if section.get("distribute") not in DISTRIBUTE:
        raise ConfigError(f"{path}: {where}.distribute must be one of {list(DISTRIBUTE)}. "
                          f"Received: {section['distribute']!r}")
    if not isinstance(section.get("tensorboard", False), bool):
        raise ConfigError(f"{path}: {where}.tensorboard must be true or false. Received: {section['tensorboard']!r}")
    def bad(key, value, what):
        raise ConfigError(f"{path}: {where}.{key} must be {what}. Received: {key}={value!r}")
    for key in positive_ints:
        value = section.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            bad(key, value, "a whole number >= 1")
    for key in positive_numbers:
        value = section.get(key)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
            bad(key, value, "a finite number > 0")
    for key in optional_ints:
        value = section.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            bad(key, value, "a whole number >= 1, or null")


def distribution_scope(cfg):
    """The scope of the config's `training.distribute` strategy (None: no distribution), entered
    around building and training each model — after `start_run` has reset Keras, since resetting
    inside a strategy's scope breaks its exit."""
    name = (cfg.get("training") or {}).get("distribute")
    return get_distribution_strategy(name).scope() if name else contextlib.nullcontext()


def check_schedule(path, where, value):
    """`where` (e.g. training.lr_schedule) names a known learning-rate schedule with valid options."""
    try:
        check_lr_schedule(value)
    except ValueError as e:
        raise ConfigError(f"{path}: {where}: {e}") from None


def check_seeds(path, seeds):
    """`sweep.seeds`: None, or a non-empty list of distinct whole numbers."""
    if seeds is not None and (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds) or
                              not all(isinstance(v, int) and not isinstance(v, bool) for v in seeds)):
        raise ConfigError(f"{path}: sweep.seeds must be a list of distinct whole numbers, or null. Received: {seeds!r}")


def check_size(path, where, value, dims):
    """`value` is a list of `dims` positive whole numbers."""
    if not isinstance(value, (list, tuple)) or len(value) != dims or \
            not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise ConfigError(f"{path}: {where} must be a list of {dims} whole numbers > 0. Received: {value!r}")


def check_split(path, where, value, parts=3):
    """`parts` non-negative fractions summing to 1 (train, validation, test)."""
    if not isinstance(value, (list, tuple)) or len(value) != parts or \
            not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and v >= 0 for v in value) or \
            abs(sum(value) - 1) > 1e-6:
        raise ConfigError(f"{path}: {where} must be {parts} fractions >= 0 summing to 1 (train, validation, "
                          f"test). Received: {value!r}")


def check_split_sizes(cfg, splits, subjects, where="data.split", validation=True):
    """Stops before training when a split leaves a part empty: no training or test cases in a fold,
    or no validation cases although the split asks for some."""
    split = cfg["data"].get("split")
    for k, parts in enumerate(splits):
        for name, idx, wanted in zip(("training", "validation", "test"), parts,
                                     (True, validation and (split is None or split[1] > 0), True)):
            if wanted and len(idx) == 0:
                fold = f" in fold {k}" if len(splits) > 1 else ""
                raise ConfigError(f"{cfg['name']}: {where} {split!r} of {subjects} subjects leaves no {name} "
                                  f"cases{fold}; give that part a larger fraction, or use more data")


def resolve_precise_bn(cfg):
    """`precise_bn: null` (the default) in `training` and in the pretrain block's training becomes
    true, or false where it cannot apply: under `distribute` (it recomputes in one process) or with
    `batchnorm: freeze` (no BatchNorm layer trains). A run's config.yaml records the resolved value."""
    def wanted(t):
        return t.get("precise_bn") if t.get("precise_bn") is not None else \
            (not t.get("distribute") and t.get("batchnorm") != "freeze")
    if isinstance(cfg.get("pretrain"), dict):  # first: it inherits the main block's unresolved value
        source = cfg["pretrain"].setdefault("training", {})
        if isinstance(source, dict):
            source["precise_bn"] = wanted(merge(cfg["training"], source))
    cfg["training"]["precise_bn"] = wanted(cfg["training"])


def check_precise_bn(path, cfg):
    """`training.precise_bn` (and the pretrain block's): true or false; not with `distribute` or with
    `batchnorm: freeze`. (Runs of several stages recompute the statistics at the end of each stage.)"""
    blocks = [("training", cfg["training"])] + ([("pretrain.training", merge(cfg["training"], cfg["pretrain"].get("training")))]
                                                if "pretrain" in cfg else [])
    for where, t in blocks:
        if not isinstance(t.get("precise_bn", False), bool):
            raise ConfigError(f"{path}: {where}.precise_bn must be true or false. Received: {t['precise_bn']!r}")
        if t.get("precise_bn") and t.get("distribute"):
            raise ConfigError(f"{path}: {where}.precise_bn recomputes BatchNorm statistics in one process; it is not "
                              f"supported with distribute ({t['distribute']!r}) yet: set one of them off")
        if t.get("precise_bn") and t.get("batchnorm") == "freeze":
            raise ConfigError(f"{path}: {where}.precise_bn recomputes the statistics of BatchNorm layers that train; "
                              "with batchnorm: freeze none does: set one of them off")


def check_pretrain(cfg, path, data_keys, training_keys):
    """The `pretrain` block (a source task): only data/model/training, each with known keys."""
    if "pretrain" not in cfg:
        return
    p = cfg["pretrain"]
    if not isinstance(p, dict):
        raise ConfigError(f"{path}: `pretrain` must be a mapping (data, model, training)")
    extra = sorted(set(p) - {"data", "model", "training"})
    if extra:
        raise ConfigError(f"{path}: unknown pretrain keys {extra}; valid: ['data', 'model', 'training']")
    for section, allowed in (("data", data_keys), ("training", training_keys)):
        unknown = sorted(set(p.get(section) or {}) - set(allowed))
        if unknown:
            raise ConfigError(f"{path}: unknown pretrain.{section} keys {unknown}; valid: {sorted(allowed)}")
    if "model" in p:
        check_model(merge(cfg["model"], p["model"]), path, "pretrain.model")
    check_numbers(path, merge(cfg["training"], p.get("training")), "pretrain.training",
                  positive_ints=("epochs", "batch_size"), positive_numbers=("learning_rate",))


def check_runs(cfg, path):
    """Each run's model exists and takes the options given, and each of its stages names a known
    strategy with a positive number of epochs."""
    check_model(cfg["model"], path, "model")
    for run in cfg["runs"]:
        check_model(merge(cfg["model"], run.get("model")), path, f"run {run['name']!r} model")
        try:
            for stage in stages(cfg, run):
                if "name" in stage:
                    check_folder_name(path, f"run {run['name']!r} stage name", stage["name"])
                get_strategy(stage["strategy"])
                check_schedule(path, f"run {run['name']!r} stage lr_schedule", stage.get("lr_schedule"))
                check_numbers(path, stage, f"run {run['name']!r} stage", positive_ints=("epochs",),
                              positive_numbers=("learning_rate",))
        except (ValueError, KeyError) as e:
            raise ConfigError(f"{path}: run {run.get('name')!r}: {e}") from e
        check_not_frozen_random(cfg, path, run)


def check_not_frozen_random(cfg, path, run):
    """A paper's strategy that freezes part of a model is refused on random weights: frozen random
    layers are no one's transfer learning, and the result would carry the paper's name. Runs that
    start from the experiment's own source, and hand-written {trainable, frozen} strategies, are
    the user's to choose."""
    if run.get("init") == "pretrain" or run.get("transfer") not in (None, "scratch"):
        return
    mcfg = merge(cfg["model"], run.get("model"))
    if mcfg.get("encoder_weights") is not None:
        return
    for stage in stages(cfg, run):
        name = stage["strategy"]
        preset = get_strategy(name) if isinstance(name, str) else None
        if preset is not None and (preset.trainable is not None or preset.frozen):
            how = ("Give it pretrained weights (model.encoder_weights imagenet or a weights file) or train every "
                   "layer (strategy: all)." if tlunet.get_model_info(mcfg["name"]).pretrained_encoder else
                   f"{mcfg['name']} has no pretrained encoder: train every layer (strategy: all), or start it from "
                   "a source model of the experiment (init: pretrain, as Cheng & Lam's X-Unet).")
            raise ConfigError(f"{path}: run {run['name']!r}: strategy {name!r} freezes part of {mcfg['name']}, "
                              f"which starts from random weights (no model.encoder_weights). {how}")


def resolve_path(cfg, path):
    """A config's path: `sample:NAME` is a bundled sample, `download` stays as it is (the loader
    fetches the data), a relative path is relative to the config file."""
    if path is None or path == "download":
        return path
    path = os.path.expanduser(str(path))
    if path.startswith(SAMPLE_PREFIX):
        return sample_path(path)
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(os.path.dirname(cfg["_config_path"]), path))


def data_blocks(cfg):
    """{where: data block} a config reads: `data`, and `pretrain.data` (the main data block with the
    pre-train block's changes) when there is a source task."""
    blocks = {"data": cfg["data"]}
    if "pretrain" in cfg:
        blocks["pretrain.data"] = merge(cfg["data"], cfg["pretrain"].get("data"))
    return blocks


def check_sources(cfg, blocks):
    """Stops before any work when a data folder a run needs is not there, saying how to get it.

    Args:
        blocks: {where: data block}, e.g. {"data": cfg["data"], "pretrain.data": ...}; a block's
            `get` key, if any, is the how-to in the message.
    """
    for where, d in blocks.items():
        if d.get("root") == "download" and d.get("kind") != "hc18":
            raise ConfigError(f"{cfg['name']}: {where}.root `download` fetches HC18 only; {where}.kind is "
                              f"{d.get('kind')!r}: pass --data FOLDER")
        if "root" not in d or d["root"] == "download":
            continue
        root = resolve_path(cfg, d["root"])
        if root is None or not os.path.isdir(root):
            what = "is not set" if root is None else f"is {root}, which is not a folder"
            how = d.get("get") or f"pass --data FOLDER or --set {where}.root=FOLDER"
            raise ConfigError(f"{cfg['name']}: {where}.root {what}. {how}")


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
                and not value.startswith(SAMPLE_PREFIX) and value not in ("imagenet", "kinetics400"):
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
    cfg = copy.deepcopy(cfg)
    if cfg.get("model", {}).get("encoder_weights") in DOWNLOADABLE_WEIGHTS:
        cfg["model"]["encoder_weights"] = path
    for run in cfg["runs"]:
        if (run.get("model") or {}).get("encoder_weights") in DOWNLOADABLE_WEIGHTS:
            run["model"]["encoder_weights"] = path
    return cfg


def plan_runs(cfg, notes, input_shape=None):
    """([(run, weights, note)] that can start, [(run name, reason)] skipped for want of weights)."""
    ready, skipped = [], []
    for run in cfg["runs"]:
        if run.get("transfer") not in (None, "scratch") or run.get("init") == "pretrain":
            ready.append((run, None, None))  # starts from the experiment's own source model
            continue
        mcfg = merge(cfg["model"], run.get("model"))
        weights, note = encoder_weights(mcfg.get("encoder_weights"), mcfg["name"], notes, input_shape)
        (skipped.append((run["name"], note)) if note.startswith("unavailable") else ready.append((run, weights, note)))
    return ready, skipped


def skip_message(cfg, skipped):
    """One paragraph: which runs were skipped for want of pretrained weights, and how to supply them."""
    names = ", ".join(name for name, _ in skipped)
    return (f"{len(skipped)} of {len(cfg['runs'])} runs fine-tune a pretrained encoder whose weights cannot be "
            f"had here, and are skipped rather than run from random weights: {names}. "
            f"{skipped[0][1][len('unavailable: '):]}. To run them, give the weights file: "
            f"--encoder-weights FILE (2D: the keras.applications `..._no_top.h5`, or a `.weights.h5` saved from "
            f"keras.applications with include_top=False; 3D: torchvision's r3d_18 `.pth` or its `.npz`).")
