"""Ensembles of trained segmentation models: one Keras model that averages its members' probabilities.

An ensemble is an ordinary functional model (saved as `.keras`, loaded after `import tlunet`,
exported by `tlunet export` like any run's model). Its input size is the largest of its members'
(pixels, H x W); a member trained at another size gets the image resized to its own size inside
the graph (bilinear, antialiased when shrinking, as `tlunet export` resizes a scan) and its
probabilities resized back, so each member sees what it was trained on.

`write_ensemble` makes one from finished runs: `tlunet ensemble RUN_A/model.keras RUN_B/model.keras
--out DIR` writes DIR/model.keras and DIR/config.yaml (the members' shared run config, their paths,
and their common `evaluation` settings), so `tlunet evaluate`, `predict` and `export` of
DIR/model.keras treat it as a run, and `tools/exported_test_hc18.py DIR` scores it on the members'
test split.
"""

import hashlib
import os

import keras
import yaml

from tlunet.train import compile_model

# run-config keys that must agree for the members to have been tested on one split
_SAME_SPLIT = ("seed", ("data", "kind"), ("data", "root"), ("data", "split"), ("data", "limit"), ("sweep", "folds"))


def ensemble_model(models, name="ensemble"):
    """A functional model whose output is the mean of `models`' outputs.

    Args:
        models: two or more Keras models with static 2D inputs (H, W, C), the same C and the same
            number of output channels. Each is used as a layer named `member{i}` (renamed).
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


def _sha1(path):
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_ensemble(model_paths, out_dir):
    """Builds the ensemble of the `.keras` files `model_paths` and writes `out_dir/model.keras` and
    `out_dir/config.yaml`.

    Each member that is a run's `model.keras` has its run's `config.yaml` beside it. When every
    member has one, they must share the split (seed, data kind, root, split, limit, folds) and the
    `evaluation` settings; the ensemble's config.yaml is the first member's, with the ensemble's
    input size, `model: {name: ensemble}` and `ensemble:` the members' paths and sha1. A member
    without a run config gives a config.yaml with only `ensemble:`.

    Returns:
        the path of the written model.keras.
    """
    model_paths = [os.path.abspath(p) for p in model_paths]
    for p in model_paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"model file not found: {p}")
    if len(set(model_paths)) != len(model_paths):
        raise ValueError(f"a model is named twice: {model_paths}; an ensemble of copies is the model itself")
    if os.path.exists(os.path.join(out_dir, "model.keras")):
        raise FileExistsError(f"{os.path.join(out_dir, 'model.keras')} already exists; choose a new --out folder")
    configs = []
    for p in model_paths:
        path = os.path.join(os.path.dirname(p), "config.yaml")
        if not os.path.isfile(path):
            configs.append(None)
            continue
        try:
            with open(path) as f:
                cfg = yaml.safe_load(f)
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"{path}: unreadable run config beside {p} ({type(e).__name__})") from e
        if not isinstance(cfg, dict):
            raise ValueError(f"{path}: a run config is a mapping; this one is {type(cfg).__name__}")
        configs.append(cfg)
    if all(c is not None for c in configs):
        first = os.path.join(os.path.dirname(model_paths[0]), "config.yaml")
        for p, c in zip(model_paths[1:], configs[1:]):
            here = os.path.join(os.path.dirname(p), "config.yaml")
            for key in (*_SAME_SPLIT, "evaluation"):
                a, b = _get(configs[0], key), _get(c, key)
                if a != b:
                    name = key if isinstance(key, str) else ".".join(key)
                    raise ValueError(f"the members' runs differ in {name}: {a!r} in {first}, {b!r} in {here}; an "
                                     "ensemble's members must share one split and one evaluation, or its test "
                                     "numbers mean nothing")
    members = []
    for p in model_paths:
        try:
            members.append(keras.models.load_model(p, compile=False))  # no optimizer state: inference
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{p} is not a loadable .keras model ({type(e).__name__}: {e})") from e
    model = ensemble_model(members)
    listed = [{"model": p, "sha1": _sha1(p), "input_size": list(m.input_shape[1:3])} for p, m in zip(model_paths, members)]
    if all(c is not None for c in configs):
        cfg = dict(configs[0])
        cfg["data"] = dict(cfg.get("data") or {}, image_size=list(model.input_shape[1:3]))
        cfg["model"] = {"name": "ensemble"}
        for key in ("runs", "run", "run_seed", "fraction", "fold", "n_train", "weights_used"):
            cfg.pop(key, None)
        cfg["ensemble"] = listed
    else:
        cfg = {"ensemble": listed}
    os.makedirs(out_dir, exist_ok=True)
    target = os.path.join(out_dir, "model.keras")
    tmp = os.path.join(out_dir, ".model.keras.tmp.keras")
    model.save(tmp)
    with open(os.path.join(out_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    os.replace(tmp, target)  # last: a folder with model.keras is complete
    return target
