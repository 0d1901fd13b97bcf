"""Ensembles of trained segmentation models: one Keras model that averages its members' probabilities.

An ensemble is an ordinary functional model (saved as `.keras`, loaded after `import tlunet`,
exported by `tlunet export` like any run's model). Its input size is the largest of its members'
(pixels, H x W); a member trained at a smaller size gets the image shrunk to its own size inside
the graph (bilinear, antialiased, as `tlunet export` shrinks a scan) and its probabilities resized
back. Through `tlunet export` such a member sees the scan resized twice (to the ensemble's size,
then to its own), not once as through its own export.

`write_ensemble` makes one from finished runs: `tlunet ensemble RUN_A/model.keras RUN_B/model.keras
--out DIR` writes DIR/model.keras and DIR/config.yaml (the members' shared run config, their paths,
and their common `evaluation` settings), so `tlunet evaluate`, `predict` and `export` of
DIR/model.keras treat it as a run.
"""

import hashlib
import os

import keras
import yaml

from tlunet.files import atomic_write
from tlunet.postprocess import PostProcess
from tlunet.resources import read_config
from tlunet.training import compile_model, save_model

# run-config keys that must agree for the members to have been tested on one split (fold: each
# fold's test images are the other folds' training images)
_SAME_SPLIT = ("seed", "fold", ("data", "kind"), ("data", "root"), ("data", "layout"), ("data", "split"),
               ("data", "limit"), ("sweep", "folds"))
# what an ensemble's config.yaml keeps of its first member's: the split, the evaluation, what it is
_KEPT = ("name", "task", "seed", "fold", "data", "evaluation", "n_val", "n_test")


def ensemble_model(models, name="ensemble"):
    """A functional model whose output is the mean of `models`' outputs.

    Args:
        models: two or more Keras segmentation models with static 2D inputs (H, W, C), the same
            C, and (N, H, W, classes) outputs with the same classes. Each is used as a layer
            named `member{i}`: the model objects passed in are renamed.
        name: the ensemble's name.

    Returns:
        a model with input (max H, max W, C), for inference: not trainable, its members in
        inference mode; compiled with tlunet's BCE + Dice loss and segmentation metrics, as
        training writes models, so `model.evaluate` works.
    """
    models = list(models)
    if len(models) < 2:
        raise ValueError(f"an ensemble needs two or more models; got {len(models)}")
    shapes = [tuple(m.input_shape[1:]) for m in models]
    for i, s in enumerate(shapes):
        if len(s) != 3 or None in s:
            raise ValueError(f"member {i} ({models[i].name!r}) has input shape {s}; an ensemble needs 2D models with "
                             "a fixed input size (H, W, C)")
    if len({s[-1] for s in shapes}) > 1:
        raise ValueError(f"the members take different channel counts: {[s[-1] for s in shapes]}")
    for i, m in enumerate(models):
        out = tuple(m.output_shape)
        if len(out) != 4 or tuple(out[1:3]) != shapes[i][:2]:
            raise ValueError(f"member {i} ({m.name!r}) maps input {shapes[i]} to output {out[1:]}; an ensemble averages "
                             "segmentation maps at their input's size")
    outputs = [m.output_shape[-1] for m in models]
    if len(set(outputs)) > 1:
        raise ValueError(f"the members give different numbers of output channels: {outputs}")
    h, w = max(s[0] for s in shapes), max(s[1] for s in shapes)
    inputs = keras.Input((h, w, shapes[0][-1]), name="images")
    probs = []
    for i, (m, (mh, mw, _)) in enumerate(zip(models, shapes)):
        m.name = f"member{i}"
        x = inputs if (mh, mw) == (h, w) else keras.layers.Resizing(
            mh, mw, interpolation="bilinear", antialias=True, name=f"member{i}_resize_in")(inputs)
        y = m(x, training=False)
        if (mh, mw) != (h, w):
            y = keras.layers.Resizing(h, w, interpolation="bilinear", name=f"member{i}_resize_out")(y)
        probs.append(y)
    model = keras.Model(inputs, keras.layers.Average(name="mean_probability")(probs), name=name)
    model.trainable = False  # for inference; and an optimizer with no variables loads back without a mismatch
    return compile_model(model)


def _get(cfg, key):
    if isinstance(key, str):
        return cfg.get(key)
    section = cfg.get(key[0]) or {}
    return section.get(key[1]) if isinstance(section, dict) else None


def file_sha1(path):
    """SHA-1 (hex) of a file's bytes."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _run_config(model_path):
    """The run config.yaml beside `model_path` (a mapping), or None if there is none."""
    path = os.path.join(os.path.dirname(model_path), "config.yaml")
    return read_config(path) if os.path.isfile(path) else None


def _check_one_split(model_paths, configs):
    """Refuses members that were not tested on one split with one evaluation."""
    have = [p for p, c in zip(model_paths, configs) if c is not None]
    if have and len(have) < len(model_paths):
        lacking = [p for p, c in zip(model_paths, configs) if c is None]
        raise ValueError(f"{lacking[0]} has no run config.yaml beside it, {have[0]} has one: an ensemble's members are "
                         "all runs (their split and evaluation are checked and kept) or all bare models")
    if not have:
        return
    evaluations = [_evaluation(c) for c in configs]
    where = [os.path.join(os.path.dirname(p), "config.yaml") for p in model_paths]
    for i in range(1, len(configs)):
        for key in (*_SAME_SPLIT, "evaluation"):
            a, b = ((evaluations[0], evaluations[i]) if key == "evaluation" else (_get(configs[0], key), _get(configs[i], key)))
            if a != b:
                name = key if isinstance(key, str) else ".".join(key)
                raise ValueError(f"the members' runs differ in {name}: {a!r} in {where[0]}, {b!r} in {where[i]}; an "
                                 "ensemble's members must share one split and one evaluation, or its test numbers "
                                 "mean nothing")


def write_ensemble(model_paths, out_dir):
    """Builds the ensemble of the `.keras` files `model_paths` and writes `out_dir/model.keras` and
    `out_dir/config.yaml`.

    Members that are runs' `model.keras` files have their run's `config.yaml` beside them; they
    must share the split (seed, fold, data kind, root, layout, split, limit, folds) and the
    `evaluation` settings (a key an older config lacks counts as the runner's default), and the
    ensemble's config.yaml keeps these from the first member's (with the ensemble's input size)
    and lists the members (path, sha1, input size, and their runs' `run`, `run_seed`, `training`).
    Members that are bare models (no config.yaml) give a config.yaml with only `ensemble:`, and
    no settings. A mix of the two is refused. `out_dir` must be new or empty; model.keras is
    written last, so a folder with it is complete.

    Returns:
        (the path of the written model.keras, the ensemble model).
    """
    model_paths = [os.path.abspath(p) for p in model_paths]
    for p in model_paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"model file not found: {p}")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"{out_dir} already exists and is not empty; choose a new --out folder")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"{out_dir} exists and is not a folder; choose a new --out folder")
    digests = [file_sha1(p) for p in model_paths]
    for i, d in enumerate(digests):
        if d in digests[:i]:
            raise ValueError(f"{model_paths[i]} is the same file as {model_paths[digests.index(d)]} (sha1 {d[:12]}); "
                             "an ensemble of copies is the model itself")
    configs = [_run_config(p) for p in model_paths]
    _check_one_split(model_paths, configs)
    members = []
    for p in model_paths:
        try:
            members.append(keras.models.load_model(p, compile=False))  # no optimizer state: inference
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{p} is not a loadable .keras model ({type(e).__name__}: {e})") from e
    model = ensemble_model(members)
    listed = []
    for p, d, m, c in zip(model_paths, digests, members, configs):
        entry = {"model": p, "sha1": d, "input_size": list(m.input_shape[1:3])}
        entry.update({k: c[k] for k in ("run", "run_seed", "training") if c is not None and k in c})
        listed.append(entry)
    if configs[0] is not None:
        cfg = {k: configs[0][k] for k in _KEPT if k in configs[0]}
        cfg["data"] = dict(cfg.get("data") or {}, image_size=list(model.input_shape[1:3]))
        cfg["sweep"] = {"folds": _get(configs[0], ("sweep", "folds"))}
        cfg["evaluation"] = _evaluation(configs[0])
        cfg["model"] = {"name": "ensemble"}
        cfg["ensemble"] = listed
    else:
        cfg = {"ensemble": listed}
    os.makedirs(out_dir, exist_ok=True)
    target, config = os.path.join(out_dir, "model.keras"), os.path.join(out_dir, "config.yaml")

    def write(tmp):
        with open(tmp, "w") as f:
            yaml.safe_dump(cfg, f, sort_keys=False)
    atomic_write(config, write)
    try:
        save_model(model, target)  # last: a folder with model.keras is complete
    except BaseException:
        os.remove(config)
        raise
    return target, model


def _evaluation(cfg):
    """How a run config says its test images are scored (`evaluation`'s tta, threshold and
    largest_component; a key an older config lacks is the default)."""
    return PostProcess.from_config(cfg.get("evaluation")).to_dict()
