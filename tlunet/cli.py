"""The `tlunet` command line."""

import os
import sys

import keras
import numpy as np

import tlunet
import tlunet_cli
from tlunet_cli import MODEL_COLUMNS, print_table
from tlunet._quiet import quiet_tensorflow
from tlunet.export import (EXPORT_FORMATS, check_export, export_model, export_shape, format_for_path, is_classifier,
                           quantization_report, read_images)
from tlunet.finetune import PRESET_SETS, strategy_report, trainable_params
from tlunet.postprocess import BadModelOutput, PostProcess, check_probabilities, read_run_config, run_config_path
from tlunet.predict import predict_folder, read_pixel_sizes
from tlunet.runners import ConfigError, config_from_dict, load_config, parse_overrides, run_experiment
from tlunet.runners.config import merge, with_weights_file
from tlunet.resources import SAMPLE_PREFIX, sample_path
from tlunet.data.kinds import colour_channels, data_kind, kinds_of, load_image_set
from tlunet.runners.base import run_split
from tlunet.runners.results import FolderInUse, write_csv
from tlunet.scoring import evaluate_cases
from tlunet.training import get_distribution_strategy, worker_role


def _cmd_models(args):
    """The model table at --input-shape or with --classes (the default table comes from the catalog)."""
    rows = []
    for name in tlunet.list_models():
        info = tlunet.get_model_info(name)
        shape = args.input_shape or info.reference_shape
        try:
            model = tlunet.build_model(name, input_shape=shape, classes=args.classes)
        except ValueError as e:  # e.g. a shape this model cannot take: say so in its row
            rows.append((name, "x".join(map(str, shape)), "-", "-", info.paper, f"not buildable: {e}"))
            continue
        rows.append((name, "x".join(map(str, shape)), f"{model.count_params():,}",
                     f"{trainable_params(model):,}", info.paper, info.description))
    print_table(MODEL_COLUMNS, rows)
    return 0


def _cmd_strategies(args):
    model = tlunet.build_model(args.model, input_shape=args.input_shape, classes=args.classes)
    strategies = PRESET_SETS.get(args.strategies) or args.strategies.split(";")
    reference = None
    if args.reference:
        reference = tlunet.build_model(args.reference, input_shape=(*model.input_shape[1:-1], 3)).count_params()
    report = strategy_report(model, strategies, reference_params=reference,
                             reference_name=args.reference or "reference")
    print(report.markdown(), end="")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        for path in report.write(args.out):
            print(f"wrote {path}")
    return 0


def _cmd_experiment(args):
    overrides = {}
    if args.data:
        overrides["data"] = {"root": args.data if args.data == "download" else os.path.abspath(args.data)}
    if args.epochs is not None:  # --epochs 0 is refused by the config check, not ignored
        overrides["training"] = {"epochs": args.epochs}
    if args.tensorboard:
        overrides = merge(overrides, {"training": {"tensorboard": True}})
    if args.distribute:
        overrides = merge(overrides, {"training": {"distribute": args.distribute}})
    overrides = merge(overrides, parse_overrides(args.set))
    cfg = load_config(args.name, "quick" if args.quick else args.profile, overrides)
    if args.encoder_weights:
        path = os.path.abspath(args.encoder_weights)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--encoder-weights {args.encoder_weights}: file not found")
        cfg = with_weights_file(cfg, path)
    run_experiment(cfg, out_dir=args.out, verbose=1 if args.verbose else 0)
    return 0


# `tlunet train`'s flags and the config keys they set: errors name the flag the user typed.
TRAIN_FLAGS = {"model.encoder_weights": "--encoder-weights", "model.name": "--model", "data.root": "--data",
               "data.kind": "--kind", "data.layout": "--layout", "data.image_size": "--image-size",
               "data.channels": "--channels", "data.split": "--holdout", "data.augment": "--augment",
               "data.subject": "--subject",
               "training.epochs": "--epochs", "training.batch_size": "--batch-size", "training.learning_rate": "--lr",
               "training.loss": "--loss", "training.patience": "--patience", "training.lr_schedule": "--lr-schedule",
               "training.distribute": "--distribute", "strategy: all": "--strategy all"}


def _train_channels(cfg, wanted):
    """(channels, why): `wanted` (--channels, or a --set data.channels), with `auto` read from the
    data of `cfg` (checked with one channel): 3 when its images have colour, else 1."""
    if wanted != "auto":
        return wanted, f"{wanted} (as asked)"
    channels = colour_channels(cfg.data.to_block(), cfg.data.get("root"))
    return channels, ("3 (the images have colour; --channels 1 trains on grey)" if channels == 3 else
                      "1 (the images are grey)")


def _train_config(args, channels, overrides):
    """The config `tlunet train` runs; a mistake is a ValueError naming the flag (or the --set key)."""
    if not 0 < args.holdout < 0.5:
        raise ValueError(f"--holdout must be a fraction in (0, 0.5): the validation part and the test part each "
                         f"take it. Received: --holdout {args.holdout}")
    if args.subject and args.kind != "pairs":
        raise ValueError(f"--subject names the subjects of --kind pairs files; --kind {args.kind} groups its own "
                         "cases: drop --subject")
    weights = args.encoder_weights
    if weights and weights not in ("imagenet",):
        weights = os.path.abspath(weights)
    raw = {
        "name": args.name, "seed": args.seed, "deterministic": args.deterministic,
        "data": {"kind": args.kind, "root": os.path.abspath(args.data), "layout": args.layout,
                 "image_size": list(args.image_size), "channels": channels,
                 "split": [1 - 2 * args.holdout, args.holdout, args.holdout], "augment": args.augment,
                 **({"subject": args.subject} if args.subject else {})},
        "model": {"name": args.model, "encoder_weights": weights},
        "training": {"epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.lr,
                     "loss": args.loss, "patience": args.patience, "mixed_precision": args.mixed_precision,
                     "jit_compile": args.xla, "tensorboard": args.tensorboard, "distribute": args.distribute,
                     **({"lr_schedule": {"name": args.lr_schedule}} if args.lr_schedule else {})},
        "runs": [{"name": args.strategy, "strategy": args.strategy}],
    }
    if args.kind != "pairs":
        raw["data"].pop("layout")
    try:
        return config_from_dict(raw, "tlunet train", overrides=overrides)
    except ConfigError as e:
        message = str(e).removeprefix("tlunet train: ")
        for key, flag in TRAIN_FLAGS.items():  # a key the user gave with --set keeps its own name
            if not any(item.startswith((key + "=", key + ".")) for item in args.set or []):
                message = message.replace(key, flag)
        raise ValueError(message) from None


def _cmd_train(args):
    overrides = parse_overrides(args.set)
    data = overrides.get("data") if isinstance(overrides.get("data"), dict) else {}
    wanted = data.get("channels", args.channels)
    if wanted not in ("auto", 1, 3):
        raise ValueError(f"data.channels must be auto, 1 or 3. Received: {wanted!r}")
    cfg = _train_config(args, 1, merge(overrides, {"data": {"channels": 1}}))  # every flag checked first
    channels, why = _train_channels(cfg, wanted)
    cfg = _train_config(args, channels, merge(overrides, {"data": {"channels": channels}}))
    weights = cfg.model.encoder_weights
    print(f"tlunet train: {cfg.model.name}, strategy {args.strategy}, from "
          f"{'random weights' if weights is None else weights}; channels {why}")
    run_experiment(cfg, out_dir=args.out, verbose=1 if args.verbose else 0)
    if worker_role(get_distribution_strategy(args.distribute))[0]:
        print(f"model saved as {os.path.join(args.out, args.name, args.strategy, 'model.keras')}")
    return 0


def _load_model(path):
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "model.keras")):
        raise FileNotFoundError(f"{path} is a run folder; did you mean {os.path.join(path, 'model.keras')}?")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        return keras.models.load_model(path)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path} is not a loadable .keras model ({type(e).__name__}: {e})") from e


def _image_model(model, path, command, image_size=None):
    """(height, width, channels) at which `tlunet evaluate`/`predict` run `model` (read from `path`),
    after one forward pass on a grey image. ValueError naming the file (and --image-size) for a model
    these commands cannot run: not one 2D image in and one mask out, a size it does not take, or
    outputs that are not probabilities (`BadModelOutput`, e.g. NaN after training that diverged)."""
    shape, out = model.input_shape, model.output_shape
    if not isinstance(shape, tuple) or not isinstance(out, tuple):
        raise ValueError(f"{path} has {len(model.inputs)} inputs and {len(model.outputs)} outputs; tlunet {command} "
                         "runs models with one image in and one mask out")
    if len(shape) != 4 or len(out) != 4:
        kind = (f"a {len(shape) - 2}D model (input {shape})" if len(shape) != 4 else
                f"not a segmentation model (its output {out} is no mask)")
        hint = "; segment volumes from Python with tlunet.inference.sliding_window_predict" if len(shape) == 5 else ""
        raise ValueError(f"{path} is {kind}; tlunet {command} segments 2D images, with a model whose input is "
                         f"(batch, height, width, channels) and whose output a mask of that layout{hint}")
    if command == "predict" and out[-1] != 1:
        raise ValueError(f"{path} has {out[-1]} output channels; tlunet predict writes masks of one-channel (binary) "
                         "models: score it with tlunet evaluate")
    _, h, w, channels = shape
    if image_size is not None:
        text = ",".join(map(str, image_size))
        if len(image_size) != 2 or not all(isinstance(v, int) and v > 0 for v in image_size):
            raise ValueError(f"--image-size {text}: give two sizes > 0, H,W")
        if any(fixed is not None and fixed != v for fixed, v in zip((h, w), image_size)):
            raise ValueError(f"--image-size {text}: {path} takes {h or 'any'}x{w or 'any'} images only (its input "
                             "size is fixed); drop --image-size")
        h, w = image_size
    if h is None or w is None:
        how = ("pass --image-size H,W (the size it was trained at)" if command == "evaluate" else
               "tlunet predict needs a model built at a fixed size (the size it was trained at)")
        raise ValueError(f"{path} accepts any input size; {how}")
    try:
        probs = model.predict(np.full((1, h, w, channels), 0.5, np.float32), verbose=0)
    except Exception as e:  # noqa: BLE001 - whatever Keras raises, the message names the file and the size
        flag = f"--image-size {h},{w}: " if image_size is not None else ""
        raise ValueError(f"{flag}{path} cannot run on {h}x{w} images ({type(e).__name__}); its down-sampling needs "
                         "sides it divides evenly (multiples of 32 suit every tlunet model)") from None
    try:
        check_probabilities(probs, model)
    except BadModelOutput as e:
        raise BadModelOutput(f"{path}: {e}") from None
    return h, w, channels


def _run_root(root):
    """A run config's data.root as an absolute path (None when it cannot be told: a relative path)."""
    if isinstance(root, str) and root.startswith(SAMPLE_PREFIX):
        return os.path.realpath(sample_path(root))
    return os.path.realpath(root) if isinstance(root, str) and os.path.isabs(root) else None


def _evaluation_data(args, saved, size, channels):
    """(data block to load, part of the run's split to score): the run's own data block and `--split`
    (default test) when --data is the data of the run whose config.yaml is `saved`; else "all"."""
    run_data = saved.get("data") if isinstance(saved, dict) and isinstance(saved.get("data"), dict) else {}
    kind = args.kind or (run_data.get("kind") if run_data.get("kind") in kinds_of("image", folders_only=True) else "pairs")
    layout = args.layout or run_data.get("layout") or "generic"
    root = os.path.abspath(args.data)
    own = bool(run_data) and _run_root(run_data.get("root")) == os.path.realpath(root) and \
        kind == run_data.get("kind") and (kind != "pairs" or layout == (run_data.get("layout") or "generic"))
    if args.split not in (None, "all") and not own:
        why = (f"--data {args.data} is not the run's data ({run_config_path(args.model)} has data.root "
               f"{run_data.get('root')!r})" if run_data else
               f"{args.model} has no run config.yaml beside it (a run's model.keras has)")
        raise ValueError(f"--split {args.split} scores part of the run's own split, but {why}; drop --split to "
                         "score every image")
    # the kind's own keys as the run read them (lung_us_ribs' classes and groups, ...), on the same kind
    kept = {k: run_data[k] for k in data_kind(kind, "image").keys - {"root", "layout"}
            if kind == run_data.get("kind") and k in run_data}
    block = {"kind": kind, "root": root, "image_size": list(size), "channels": channels, **kept,
             **({"limit": run_data.get("limit")} if own else {}), **({"layout": layout} if kind == "pairs" else {})}
    return block, (args.split or "test") if own else "all", own


def _cases_to_score(args, saved, split, arrays, groups, own):
    """The arrays cut to `split` of the run's split, and a phrase saying which cases they are."""
    images, masks, meta = arrays
    if split == "all":
        note = " (--split all: training cases included)" if own else \
            " (not the run's data, so its split does not apply)" if saved else ""
        return arrays, f"all {len(images)} images{note}"
    chosen = run_split(saved, groups)[split]
    recorded = saved.get(f"n_{split}")
    if recorded is not None and recorded != len(chosen):
        raise ValueError(f"--data {args.data} gives {len(chosen)} {split} cases of the run's split where the run "
                         f"had {recorded}: the folder changed since the run. --split all scores every image")
    fold = f", fold {saved['fold']}" if (saved.get("sweep") or {}).get("folds") else ""
    return ((images[chosen], masks[chosen], [meta[i] for i in chosen]),
            f"the {len(chosen)} {split} cases of the run's split ({len({groups[i] for i in chosen})} subjects{fold}; "
            "--split test|val|train|all)")


def _check_own_csv(path):
    """FileExistsError when `path` holds a file that is not an earlier `tlunet evaluate --csv` (its
    header starts with `case,`): a user's own file is not replaced."""
    if not os.path.exists(path):
        return
    try:
        with open(path, encoding="utf-8") as f:
            own = f.readline().startswith("case,")
    except (OSError, UnicodeDecodeError):
        own = False
    if not own:
        raise FileExistsError(f"--csv {path} exists and is not a per-case table tlunet evaluate wrote; give a new "
                              "file name (it would be replaced)")


def _cmd_evaluate(args):
    post, source = _post_process(args)
    model = _load_model(args.model)
    h, w, channels = _image_model(model, args.model, "evaluate", args.image_size)
    saved = read_run_config(args.model, "pass --kind and --layout")
    block, split, own = _evaluation_data(args, saved, (h, w), channels)
    images, masks, meta, groups, source_data = load_image_set(block, root=block["root"])
    (images, masks, meta), scored = _cases_to_score(args, saved, split, (images, masks, meta), groups, own)
    try:
        rows, _ = evaluate_cases(model, images, masks, meta, post)
    except BadModelOutput as e:  # the probe passed; some image did not
        raise BadModelOutput(f"{args.model}: {e}") from None
    # HC18 scans with their full-size annotation get the challenge's measures (adf_mm is their HC error)
    keys = [k for k in ("dice", "miou", "pixel_accuracy", "df_mm", "adf_mm", "dice_full", "hausdorff_mm")
            if k in rows[0]]
    if "adf_mm" not in keys and "hc_abs_error_mm" in rows[0]:
        keys.append("hc_abs_error_mm")
    print(f"{args.model} on {source_data}: {scored} at {h}x{w}; {_settings_used(post, source)}:")
    for k in keys:
        values = np.array([r[k] for r in rows], float)
        print(f"  {k}: {np.nanmean(values):.4f} ± {np.nanstd(values):.4f}")
    if args.csv:
        _check_own_csv(args.csv)
        write_csv(args.csv, rows)
        print(f"wrote {args.csv}")
    return 0


def _cmd_ensemble(args):
    from tlunet.ensemble import write_ensemble

    path, model = write_ensemble(args.models, args.out)
    runs = os.path.isfile(run_config_path(args.models[0]))  # runs all have a config.yaml, bare models none (checked)
    print(f"wrote {path}: the mean probability of {len(args.models)} models, input {model.input_shape[1]}x"
          f"{model.input_shape[2]}, and {os.path.join(args.out, 'config.yaml')}; " +
          ("`tlunet evaluate`, `predict` and `export` of it use the members' evaluation settings" if runs else
           "the members are bare models (no run config.yaml beside them), so it has no split or evaluation settings"))
    return 0


def _post_process(args):
    """(PostProcess, where each setting came from) of the --tta, --largest-component and --threshold
    flags over the run's config.yaml (`PostProcess.from_flags`)."""
    return PostProcess.from_flags(args.model, tta=args.tta, largest_component=args.largest_component,
                                  threshold=args.threshold)


def _settings_used(post, source):
    """What `tlunet evaluate`/`predict` applied, and where each setting came from."""
    used = [f"flip test-time augmentation (from {source['tta']})"] if post.tta else []
    if post.largest_component:
        used.append(f"the largest region only (from {source['largest_component']})")
    used.append(f"threshold {post.threshold:g}" + (f" (from {source['threshold']})" if "threshold" in source else ""))
    return ", ".join(used)


def _cmd_predict(args):
    post, source = _post_process(args)
    model = _load_model(args.model)
    _image_model(model, args.model, "predict")
    sizes = read_pixel_sizes(args.pixel_size_csv) if args.pixel_size_csv else args.pixel_size
    skipped = []
    try:
        rows = predict_folder(model, args.input, args.output, pixel_sizes=sizes, overwrite=args.overwrite,
                              skipped=skipped, post=post)
    except BadModelOutput as e:  # the probe passed; some image did not
        raise BadModelOutput(f"{args.model}: {e}") from None
    print(f"wrote {len(rows)} masks and overlays and predictions.csv to {args.output}; {_settings_used(post, source)}")
    if skipped:
        print(f"skipped {len(skipped)} HC18 annotation file(s), the outlines of their scans: {', '.join(skipped[:3])}"
              f"{', ...' if len(skipped) > 3 else ''}")
    return 0


def _cmd_export(args):
    fmt = args.format or format_for_path(args.output)
    flags = {"tta": None if args.tta in (None, "none") else args.tta, "largest_component": args.largest_component}
    check_export(fmt, args.output, {"quantize": args.quantize, "representative_data": args.representative,
                                    "validation_data": args.validation_data, **flags}, cli=True)
    model = _load_model(args.model)
    bad = [w.path for w in model.weights if not np.all(np.isfinite(keras.ops.convert_to_numpy(w)))]
    if bad:  # a diverged run's weights: the deployed model would answer NaN
        raise ValueError(f"{args.model}: {len(bad)} weight(s) hold NaN or infinite values ({bad[0]}, ...); it would "
                         "output NaN: retrain it (a lower learning rate)")
    if is_classifier(model):  # a classification run's config.yaml has classes, and no evaluation settings
        return _export_classifier(args, model, fmt)
    post, source = _post_process(args)
    if not EXPORT_FORMATS[fmt].options >= {"tta", "largest_component"}:
        _note_bare_model(EXPORT_FORMATS[fmt].label, post, source)
    if fmt == "savedmodel":
        return _export_savedmodel(args, model, post, source)
    return _export_file(args, model, fmt)


def _note_bare_model(label, post, source):
    """Says which of the run's post-processing steps (from its config.yaml) a bare-model file leaves out."""
    for key in ("tta", "largest_component"):
        if not getattr(post, key):
            continue
        what, hint = (("flip test-time augmentation", "average its output on each image and its left-right mirror")
                      if key == "tta" else
                      (f"the largest region of probabilities >= {post.threshold:g}",
                       "keep the largest region of its thresholded output"))
        print(f"Note: {source[key]} evaluated the run with {what}; a {label} file is the bare model ({hint} to "
              "predict as the run was evaluated).")


# what every SavedModel's serve takes beyond its size and channels (`tlunet.export.export_savedmodel`)
_SERVE_DTYPES = ("Other dtypes are refused (cast float64 to float32). The serving_default signature is uint8 only "
                 "and converts NumPy floats without a word: give it uint8, or use serve_float.")


def _serve_channels(model):
    return 'grey or RGB (RGB read as grey)' if model.input_shape[-1] == 1 else 'RGB or grey (grey repeated)'


def _export_savedmodel(args, model, post, source):
    """`tlunet export` to a SavedModel, with the run's post-processing built into `serve`."""
    path = export_model(model, args.output, format="savedmodel", size=args.size, **post.to_dict())
    built = []
    if post.tta:
        built.append(f"averages each image's and its mirror's probabilities (flip test-time augmentation, from "
                     f"{source['tta']}; --tta none for the bare model)")
    if post.largest_component:
        built.append(f"keeps only the largest region of probabilities >= {post.threshold:g} (the rest read "
                     f"0; from {source['largest_component']}; --no-largest-component to keep every region)")
    built = f" serve {' and '.join(built)}." if built else ""
    print(f"SavedModel written to {path}.{built} Endpoints: serve = uint8 0-255 or float32 in [0, 1] images of any size, "
          f"{_serve_channels(model)} -> probabilities at that size; serve_float = float32 in [0, 1] only; serve_model "
          f"= float32 in [0, 1] at the model's own size. {_SERVE_DTYPES}")
    return 0


def _export_classifier(args, model, fmt):
    """`tlunet export` of a classifier (output (N, K) class probabilities, a classification run's
    model.keras): its class names from the run's config.yaml, no segmentation post-processing."""
    classes = model.output_shape[-1]
    given = [flag for flag, on in (("--tta flip", args.tta == "flip"), ("--largest-component", args.largest_component),
                                   ("--threshold", args.threshold is not None), ("--validation-data",
                                                                                   args.validation_data)) if on]
    if given:  # each post-processes or scores a segmentation model's probability maps
        raise ValueError(f"{given[0]} is for segmentation models (probability maps, masks); {args.model} is a "
                         f"classifier (output (N, {classes}) class probabilities): drop {given[0]}")
    names, origin = _run_class_names(args.model, classes)
    columns = f"class probabilities (N, {classes}), columns {', '.join(names)} ({origin})"
    if fmt != "savedmodel":
        return _export_file(args, model, fmt, output=f"float32 {columns}")
    path = export_model(model, args.output, format="savedmodel", size=args.size, class_names=names)
    h, w = args.size or model.input_shape[1:3]
    print(f"SavedModel written to {path}. Endpoints: serve = uint8 0-255 or float32 in [0, 1] images (N, H, W, C) of "
          f"any size, {_serve_channels(model)}, resized to {h}x{w} -> float32 {columns}; class_names = those names; "
          f"serve_float = float32 in [0, 1] only; serve_model = float32 in [0, 1] at {h}x{w}. {_SERVE_DTYPES}")
    return 0


def _run_class_names(model_path, classes):
    """(class names, where they come from) of a classifier with `classes` outputs: the `classes` of
    the run's config.yaml beside `model_path`, else "0", ..., "K-1". ValueError naming the file for
    a config whose `classes` is not a list of `classes` names."""
    config = run_config_path(model_path)
    numbered = [str(i) for i in range(classes)]
    saved = read_run_config(model_path, f"fix it, or move it away to export with classes named 0..{classes - 1}")
    names = saved.get("classes") if isinstance(saved, dict) else None
    if names is None:
        why = "no config.yaml beside the model" if saved is None else f"{config} lists no classes"
        return numbered, f"numbered: {why}"
    if not isinstance(names, list):
        raise ValueError(f"{config}: `classes` must list the {classes} class names of {model_path}. "
                         f"Received: {names!r}")
    if len(names) != classes:
        raise ValueError(f"{config} has {len(names)} classes but {model_path} outputs {classes} class probabilities: "
                         "is it the config.yaml of the run that trained this model?")
    return [str(name) for name in names], f"from {config}"


def _export_file(args, model, fmt, output="float32 probabilities at that size"):
    """`tlunet export` to a LiteRT or ONNX file, optionally int8 and checked against validation data;
    `output` describes the file's output in the printed line."""
    from tlunet.data import find_pairs, load_arrays

    shape, channels = export_shape(model, args.size)  # checked before any image is read
    if (args.representative or args.validation_data) and len(shape) != 2:
        raise ValueError("--representative and --validation-data read 2D images; quantise a 3D model from Python "
                         "(tlunet.export.export_model with representative_data)")
    validation = None
    if args.validation_data:
        validation = load_arrays(find_pairs(args.validation_data), shape, channels=channels)
    representative = read_images(args.representative, shape, channels) if args.representative else None
    try:
        path = export_model(model, args.output, format=fmt, size=args.size, quantize=args.quantize,
                            representative_data=representative)
    except ImportError as e:  # a missing optional package: one line, like the other errors
        raise ValueError(str(e)) from e
    kind = EXPORT_FORMATS[fmt].label + (" int8" if args.quantize else " float32")
    dims = ", ".join(map(str, (*shape, channels)))
    print(f"{kind} model written to {path} ({os.path.getsize(path) / 1e6:.1f} MB). Input \"images\": float32 "
          f"(N, {dims}) in [0, 1] (resize to {'x'.join(map(str, shape))} and divide uint8 by 255 first); output: "
          f"{output}.")
    if validation is not None:
        print(quantization_report(model, path, *validation))
    return 0


COMMANDS = {"models": _cmd_models, "strategies": _cmd_strategies, "experiment": _cmd_experiment, "train": _cmd_train,
            "evaluate": _cmd_evaluate, "ensemble": _cmd_ensemble, "predict": _cmd_predict, "export": _cmd_export}


def run_command(args):
    """Runs a parsed command (`tlunet_cli` parses); its exit status. A user's mistake is one line on stderr."""
    if not getattr(args, "verbose", False):
        quiet_tensorflow()
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback; training resumes from its saved epochs
        resume = "; rerun the same command to resume (finished epochs are kept)" if args.command in ("train", "experiment") \
            else ""
        print(f"\ntlunet {args.command}: interrupted{resume}", file=sys.stderr)  # after a progress bar's line
        return 130
    except (ValueError, OSError, FolderInUse) as e:  # DataError/ConfigError; missing, unwritable or full disks
        message = str(e).removeprefix(f"tlunet {args.command}: ")  # a config built from flags says where already
        print(f"tlunet {args.command}: error: {message}", file=sys.stderr)
        return 2


def main(argv=None):
    """The `tlunet` command: `tlunet.cli.main(["train", ...])` runs as the console script does."""
    return tlunet_cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
