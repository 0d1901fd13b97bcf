"""The `tlunet` command line."""

import argparse
import os
import sys

import keras
import numpy as np
import yaml

import tlunet
from tlunet._quiet import quiet_tensorflow
from tlunet.export import export_savedmodel
from tlunet.finetune import PRESET_SETS, strategy_report, trainable_params
from tlunet.inference import EVALUATION_DEFAULTS
from tlunet.predict import predict_folder, read_pixel_sizes
from tlunet.resources import list_experiments
from tlunet.runners import config_from_dict, load_config, parse_overrides, run_experiment
from tlunet.runners.config import merge, with_weights_file
from tlunet.runners.image import evaluate_cases, load_data
from tlunet.runners.results import FolderInUse, write_csv
from tlunet.train import get_distribution_strategy, worker_role


def _shape(text):
    try:
        return tuple(None if p.strip().lower() == "none" else int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes like 256,256,3, got {text!r}")


def _cmd_models(args):
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
    header = ("model", "input", "params", "trainable", "paper", "description")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for r in [header] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
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
    if args.list or not args.name:
        if not args.list:
            print("tlunet experiment: name an experiment (or a config.yaml); these ship with tlunet:\n", file=sys.stderr)
        for name, about in list_experiments().items():
            print(f"{name:28s} {about}")
        print("\nRun one with `tlunet experiment NAME --quick`; results go to ./results/NAME/.")
        return 0 if args.list else 2
    overrides = {}
    if args.data:
        overrides["data"] = {"root": args.data if args.data == "download" else os.path.abspath(args.data)}
    if args.epochs:
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


def _cmd_train(args):
    raw = {
        "name": args.name, "seed": args.seed, "deterministic": args.deterministic,
        "data": {"kind": args.kind, "root": os.path.abspath(args.data), "layout": args.layout,
                 "image_size": list(args.image_size), "channels": args.channels,
                 "split": [1 - 2 * args.holdout, args.holdout, args.holdout], "augment": args.augment},
        "model": {"name": args.model, "encoder_weights": args.encoder_weights},
        "training": {"epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.lr,
                     "loss": args.loss, "patience": args.patience, "mixed_precision": args.mixed_precision,
                     "jit_compile": args.xla, "tensorboard": args.tensorboard, "distribute": args.distribute,
                     **({"lr_schedule": {"name": args.lr_schedule}} if args.lr_schedule else {})},
        "runs": [{"name": args.strategy, "strategy": args.strategy}],
    }
    if args.kind != "pairs":
        raw["data"].pop("layout")
    cfg = config_from_dict(raw, os.path.join(os.getcwd(), "cli.yaml"), overrides=parse_overrides(args.set))
    run_experiment(cfg, out_dir=args.out, verbose=1 if args.verbose else 0)
    if worker_role(get_distribution_strategy(args.distribute))[0]:
        print(f"model saved as {os.path.join(args.out, args.name, args.strategy, 'model.keras')}")
    return 0


def _load_model(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        return keras.models.load_model(path)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path} is not a loadable .keras model ({type(e).__name__}: {e})") from e


def _cmd_evaluate(args):
    settings, source = _run_settings(args, threshold_always=True)
    model = _load_model(args.model)
    _, h, w, channels = model.input_shape
    if args.image_size:
        h, w = args.image_size
    if h is None or w is None:
        raise ValueError(f"{args.model} accepts any input size; pass --image-size H,W (the size it was trained at)")
    kind, layout = args.kind, args.layout
    if kind is None or layout is None:  # a run's: its config's data kind and layout
        saved = _run_config(args.model, "pass --kind and --layout")
        data = (saved.get("data") if isinstance(saved, dict) else None) or {}
        if kind is None:
            kind = data.get("kind") if data.get("kind") in ("hc18", "pairs") else "pairs"
        if layout is None:
            layout = data.get("layout") or "generic"
    raw = {"name": "evaluate", "data": {"kind": kind, "root": os.path.abspath(args.data),
                                        "image_size": [h, w], "channels": channels},
           "runs": [{"name": "evaluate"}]}
    if kind == "pairs":
        raw["data"]["layout"] = layout
    cfg = config_from_dict(raw, os.path.join(os.getcwd(), "cli.yaml"))
    images, masks, meta, _, source_data = load_data(cfg, cfg["data"])
    rows, _ = evaluate_cases(model, images, masks, meta, **settings)
    # HC18 scans with their full-size annotation get the challenge's measures (adf_mm is their HC error)
    keys = [k for k in ("dice", "miou", "pixel_accuracy", "df_mm", "adf_mm", "dice_full", "hausdorff_mm")
            if k in rows[0]]
    if "adf_mm" not in keys and "hc_abs_error_mm" in rows[0]:
        keys.append("hc_abs_error_mm")
    print(f"{args.model} on {source_data} ({len(rows)} images at {h}x{w}; {_settings_used(settings, source)}):")
    for k in keys:
        values = np.array([r[k] for r in rows], float)
        print(f"  {k}: {np.nanmean(values):.4f} ± {np.nanstd(values):.4f}")
    if args.csv:
        write_csv(args.csv, rows)
        print(f"wrote {args.csv}")
    return 0


def _cmd_ensemble(args):
    from tlunet.ensemble import write_ensemble

    path, model = write_ensemble(args.models, args.out)
    runs = os.path.isfile(_beside(args.models[0]))  # runs all have a config.yaml, bare models none (checked)
    print(f"wrote {path}: the mean probability of {len(args.models)} models, input {model.input_shape[1]}x"
          f"{model.input_shape[2]}, and {os.path.join(args.out, 'config.yaml')}; " +
          ("`tlunet evaluate`, `predict` and `export` of it use the members' evaluation settings" if runs else
           "the members are bare models (no run config.yaml beside them), so it has no split or evaluation settings"))
    return 0


def _settings_used(settings, source):
    """What `tlunet evaluate`/`predict` applied, and where each setting came from."""
    used = [f"flip test-time augmentation (from {source['tta']})"] if settings["tta"] else []
    if settings["largest_component"]:
        used.append(f"the largest region only (from {source['largest_component']})")
    used.append(f"threshold {settings['threshold']:g}" + (f" (from {source['threshold']})" if "threshold" in source else ""))
    return ", ".join(used)


def _cmd_predict(args):
    settings, source = _run_settings(args, threshold_always=True)
    model = _load_model(args.model)
    sizes = read_pixel_sizes(args.pixel_size_csv) if args.pixel_size_csv else args.pixel_size
    rows = predict_folder(model, args.input, args.output, pixel_sizes=sizes, **settings)
    print(f"wrote {len(rows)} masks and overlays and predictions.csv to {args.output}; {_settings_used(settings, source)}")
    return 0


def _beside(model_path):
    return os.path.join(os.path.dirname(os.path.abspath(model_path)), "config.yaml")


def _run_config(model_path, hint):
    """The parsed config.yaml beside a run's model.keras, or None if there is none."""
    config = _beside(model_path)
    if not os.path.isfile(config):
        return None
    try:
        with open(config) as f:
            return yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{config}: unreadable run config beside {model_path} ({type(e).__name__}); {hint}") from e


def _run_settings(args, threshold_always=False):
    """({"tta", "largest_component", "threshold"}, where each came from): each from its flag, else
    from the `evaluation` section of the run folder's config.yaml when the model is a run's
    model.keras (read only for what no flag gives), so evaluate, predict and export work as the
    run was evaluated. The threshold is checked where it is used: always (`threshold_always`, predict), or
    for the largest-region step (export)."""
    flags = {"tta": None if args.tta is None else (None if args.tta == "none" else args.tta),
             "largest_component": args.largest_component, "threshold": args.threshold}
    names = {"tta": "--tta", "largest_component": "--largest-component", "threshold": "--threshold"}
    settings = {k: v for k, v in flags.items() if v is not None or (k == "tta" and args.tta is not None)}
    source = {k: names[k] for k in settings}
    missing = [k for k in flags if k not in settings]
    config = _beside(args.model)
    if missing and os.path.isfile(config):
        hint = "pass " + ", ".join(names[k] for k in missing)
        saved = _run_config(args.model, hint)
        evaluation = saved.get("evaluation") if isinstance(saved, dict) else None
        if evaluation is not None and not isinstance(evaluation, dict):
            raise ValueError(f"{config}: `evaluation` is not a mapping ({evaluation!r}); {hint}")
        for k in missing:
            if k in (evaluation or {}):
                settings[k], source[k] = evaluation[k], config
    settings = EVALUATION_DEFAULTS | settings
    if settings["tta"] not in (None, "flip"):
        raise ValueError(f"{source['tta']}: evaluation.tta is {settings['tta']!r}; pass --tta none or flip")
    if not isinstance(settings["largest_component"], bool):
        raise ValueError(f"{source['largest_component']}: evaluation.largest_component is "
                         f"{settings['largest_component']!r}; pass --largest-component or --no-largest-component")
    threshold = settings["threshold"]
    if (settings["largest_component"] or threshold_always) and (
            isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1):
        raise ValueError(f"{source.get('threshold', config)}: the threshold is {threshold!r}, not a number in (0, 1); "
                         "pass --threshold")
    return settings, source


def _cmd_export(args):
    from tlunet.data import find_pairs, load_arrays
    from tlunet.export import SUFFIXES, export_model, export_shape, quantization_report, read_images

    fmt = args.format or next((f for f, suffix in SUFFIXES.items() if args.output.endswith(suffix)), "savedmodel")
    if args.quantize and fmt != "litert":
        raise ValueError(f"--quantize {args.quantize} is for --format litert (got --format {fmt})")
    if args.quantize and not args.representative:
        raise ValueError("--quantize int8 needs --representative FOLDER: 100-500 images like the ones the model "
                         "will see, to calibrate the int8 ranges (random images would calibrate them wrongly)")
    if args.representative and not args.quantize:
        raise ValueError("--representative calibrates int8 quantisation; add --quantize int8")
    if args.validation_data and fmt != "litert":
        raise ValueError("--validation-data compares a LiteRT file with the Keras model; use it with --format litert")
    settings, source = _run_settings(args)
    if fmt != "savedmodel":
        kind = {"litert": "LiteRT", "onnx": "ONNX"}[fmt]
        for key in ("tta", "largest_component"):
            if not settings[key]:
                continue
            what, hint = (("flip test-time augmentation", "average its output on each image and its left-right mirror")
                          if key == "tta" else
                          (f"the largest region of probabilities >= {settings['threshold']:g}",
                           "keep the largest region of its thresholded output"))
            if source[key].startswith("--"):
                raise ValueError(f"{source[key]} is built into a SavedModel's serve endpoint only; a {kind} file is "
                                 "the bare model")
            print(f"Note: {source[key]} evaluated the run with {what}; a {kind} file is the bare model ({hint} to "
                  "predict as the run was evaluated).")
    model = _load_model(args.model)
    if fmt == "savedmodel":
        path = export_savedmodel(model, args.output, size=args.size, tta=settings["tta"],
                                 largest_component=settings["largest_component"], threshold=settings["threshold"])
        built = []
        if settings["tta"]:
            built.append(f"averages each image's and its mirror's probabilities (flip test-time augmentation, from "
                         f"{source['tta']}; --tta none for the bare model)")
        if settings["largest_component"]:
            built.append(f"keeps only the largest region of probabilities >= {settings['threshold']:g} (the rest read "
                         f"0; from {source['largest_component']}; --no-largest-component to keep every region)")
        built = f" serve {' and '.join(built)}." if built else ""
        print(f"SavedModel written to {path}.{built} Endpoints: serve = uint8 0-255 or float32 in [0, 1] images of any size "
              "-> probabilities at that size; serve_float = float32 in [0, 1] only; serve_model = float32 in [0, 1] at "
              "the model's own size. Other dtypes are refused (cast float64 to float32). The serving_default "
              "signature is uint8 only and converts NumPy floats without a word: give it uint8, or use serve_float.")
        return 0
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
    kind = {"litert": "LiteRT", "onnx": "ONNX"}[fmt] + (" int8" if args.quantize else " float32")
    dims = ", ".join(map(str, (*shape, channels)))
    print(f"{kind} model written to {path} ({os.path.getsize(path) / 1e6:.1f} MB). Input \"images\": float32 "
          f"(N, {dims}) in [0, 1] (resize to {'x'.join(map(str, shape))} and divide uint8 by 255 first); output: "
          "float32 probabilities at that size.")
    if validation is not None:
        print(quantization_report(model, path, *validation))
    return 0


def _add_run_setting_flags(p):
    """evaluate's and predict's --threshold, --tta, --largest-component: each defaults to the
    `evaluation` section of the run's config.yaml when MODEL is a run's model.keras."""
    p.add_argument("--threshold", type=float, help="foreground probability. Default: the evaluation.threshold of "
                   "the run's config.yaml when MODEL is a run's model.keras, else 0.5")
    p.add_argument("--tta", choices=["none", "flip"], help="flip: average each image's and its mirror's "
                   "probabilities. Default: the run's evaluation.tta, else none")
    p.add_argument("--largest-component", action=argparse.BooleanOptionalAction, default=None,
                   help="keep only the largest connected region of each mask, at the scan's size (one head per "
                        "scan). Default: the run's evaluation.largest_component, else off")


def build_parser():
    parser = argparse.ArgumentParser(prog="tlunet", description="Transfer-learning U-Nets (Keras 3).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the model zoo with parameter counts")
    p.add_argument("--input-shape", type=_shape, help="e.g. 256,256,1 (default: each paper's shape)")
    p.add_argument("--classes", type=int, default=1)
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("strategies", help="trainable parameters per fine-tuning strategy (md + csv)")
    p.add_argument("model", help="model name, see `tlunet models`")
    p.add_argument("--strategies", default="wang2023",
                   help="a preset set (wang2023, cheng2021_vunet, cheng2021_xunet) or presets joined by ';'")
    p.add_argument("--input-shape", type=_shape)
    p.add_argument("--classes", type=int, default=1)
    p.add_argument("--reference", help="model to compare against, e.g. unet (Wang 2023's 31M U-Net)")
    p.add_argument("--out", help="write OUT.md and OUT.csv")
    p.set_defaults(func=_cmd_strategies)

    p = sub.add_parser("experiment", help="run a paper's experiment (e.g. wang2023_fetal_head --quick)")
    p.add_argument("name", nargs="?", help="a shipped experiment (see --list), or a config.yaml path")
    p.add_argument("--list", action="store_true", help="list the experiments that ship with tlunet")
    p.add_argument("--quick", action="store_true", help="the quick CPU profile (< 10 min)")
    p.add_argument("--profile", help="a profile of the config, e.g. full")
    p.add_argument("--data", help="override the data root (HC18: `download` fetches the official files)")
    p.add_argument("--encoder-weights", help="pretrained encoder weights file for the runs that fine-tune "
                                             "an ImageNet encoder (used when ImageNet cannot be downloaded)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any config key, e.g. --set training.epochs=5 --set pretrain.data.root=/data/ecssd")
    p.add_argument("--epochs", type=int, help="override the epochs")
    p.add_argument("--tensorboard", action="store_true", help="TensorBoard logs in each run's stage folders")
    p.add_argument("--distribute", choices=["mirrored", "multi_worker"],
                   help="tf.distribute: all local GPUs, or the workers TF_CONFIG names (run the same command on each)")
    p.add_argument("--out", default="results", help="results folder (default: results)")
    p.add_argument("-v", "--verbose", action="store_true", help="Keras progress bars and TensorFlow's own log lines")
    p.set_defaults(func=_cmd_experiment)

    p = sub.add_parser("train", help="train one model on a data folder")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="data root")
    p.add_argument("--kind", default="pairs", choices=["hc18", "pairs"])
    p.add_argument("--layout", default="generic", help="paired-folder layout (generic, ecssd, covid_ct, ...)")
    p.add_argument("--image-size", type=_shape, default=(256, 256))
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--strategy", default="all", help="fine-tuning preset")
    p.add_argument("--encoder-weights", default=None, help="imagenet or a weights file")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--loss", default="bce_dice")
    p.add_argument("--augment", default=None, help="augmentation preset")
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--holdout", type=float, default=0.15, help="validation and test fraction each")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action="store_true")
    p.add_argument("--mixed-precision", choices=["mixed_float16", "mixed_bfloat16"])
    p.add_argument("--xla", action="store_true", help="jit_compile the training step")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any config key, e.g. --set training.lr_schedule.name=cosine (checked like a config file)")
    p.add_argument("--lr-schedule", choices=["constant", "cosine", "poly", "plateau"],
                   help="learning-rate schedule (options via a config: training.lr_schedule)")
    p.add_argument("--tensorboard", action="store_true", help="TensorBoard logs in the run's stage folder")
    p.add_argument("--distribute", choices=["mirrored", "multi_worker"])
    p.add_argument("--name", default="train", help="results sub-folder")
    p.add_argument("--out", default="results")
    p.add_argument("-v", "--verbose", action="store_true", help="TensorFlow's own log lines (and Keras progress bars)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="Dice, mIoU, pixel accuracy (and on HC18 the challenge's DF, ADF, full-size "
                       "Dice and Hausdorff) of a model")
    p.add_argument("model", help="a .keras file")
    p.add_argument("--data", required=True)
    p.add_argument("--kind", choices=["hc18", "pairs"], help="default: the run's data.kind when MODEL is a run's "
                   "model.keras, else pairs")
    p.add_argument("--layout", help="paired-folder layout. Default: the run's data.layout, else generic")
    p.add_argument("--csv", help="write per-case metrics here")
    p.add_argument("--image-size", type=_shape, help="H,W to evaluate at, for a model built with any input size")
    _add_run_setting_flags(p)
    p.add_argument("-v", "--verbose", action="store_true", help="TensorFlow's own log lines (and Keras progress bars)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("ensemble", help="one model averaging several trained models' probabilities (.keras)")
    p.add_argument("models", nargs="+", help="two or more .keras files: runs' model.keras files of one split "
                   "(checked) or bare models")
    p.add_argument("--out", required=True, help="folder for model.keras and config.yaml (new or empty)")
    p.add_argument("-v", "--verbose", action="store_true", help="TensorFlow's own log lines")
    p.set_defaults(func=_cmd_ensemble)

    p = sub.add_parser("predict", help="folder of images -> masks, overlays, predictions.csv")
    p.add_argument("model", help="a .keras file")
    p.add_argument("input", help="folder of images")
    p.add_argument("output", help="output folder")
    p.add_argument("--pixel-size", type=float, help="mm per pixel, for head circumference")
    p.add_argument("--pixel-size-csv", help="HC18-style CSV with per-image pixel sizes")
    _add_run_setting_flags(p)
    p.add_argument("-v", "--verbose", action="store_true", help="TensorFlow's own log lines (and Keras progress bars)")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("export", help="SavedModel (uint8 or float32 [0, 1] images of any size), LiteRT or ONNX file")
    p.add_argument("model", help="a .keras file")
    p.add_argument("output", help="SavedModel directory, or a .tflite / .onnx file (must not exist)")
    p.add_argument("--format", choices=["savedmodel", "litert", "onnx"],
                   help="default: litert for *.tflite, onnx for *.onnx, else savedmodel. LiteRT and ONNX files take "
                        "float32 images in [0, 1] at the model's input size")
    p.add_argument("--size", type=_shape, help="H,W for models built with any input size")
    p.add_argument("--tta", choices=["none", "flip"],
                   help="flip: the SavedModel's serve averages each image's and its mirror's probabilities. Default: "
                        "the evaluation.tta of the run's config.yaml when MODEL is a run's model.keras, else none")
    p.add_argument("--largest-component", action=argparse.BooleanOptionalAction, default=None,
                   help="the SavedModel's serve keeps only the largest connected region of probabilities >= the "
                        "threshold (others read 0); one-channel models. Default: the evaluation.largest_component "
                        "of the run's config.yaml when MODEL is a run's model.keras, else off")
    p.add_argument("--threshold", type=float,
                   help="the probability that defines --largest-component's regions. Default: the "
                        "evaluation.threshold of the run's config.yaml, else 0.5")
    p.add_argument("--quantize", choices=["int8"], help="LiteRT full-integer quantisation (float32 in and out)")
    p.add_argument("--representative", metavar="FOLDER",
                   help="images that calibrate --quantize int8 (a folder of images, or one with images/)")
    p.add_argument("--validation-data", metavar="FOLDER",
                   help="an images/ + masks/ folder: print Dice of the Keras model and of the LiteRT file")
    p.add_argument("-v", "--verbose", action="store_true", help="TensorFlow's own log lines (and Keras progress bars)")
    p.set_defaults(func=_cmd_export)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not getattr(args, "verbose", False):
        quiet_tensorflow()
    try:
        return args.func(args)
    except (ValueError, OSError, FolderInUse) as e:  # DataError/ConfigError; missing, unwritable or full disks
        print(f"tlunet {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
