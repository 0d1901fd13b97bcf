"""The `tlunet` argument parser, built from the catalog so help lists every choice without TensorFlow."""

import argparse

from tlunet_cli import _channels, _one_of, _shape, version


def _strategy_help(names):
    return "; ".join(f"{n}: {s['description']}" for n, s in names["strategies"].items())


def _add_models(sub, names):
    p = sub.add_parser("models", help="list the model zoo with parameter counts")
    p.add_argument("--input-shape", type=_shape, help="e.g. 256,256,1 (default: each paper's shape)")
    p.add_argument("--classes", type=int, default=1, help="output classes (default: %(default)s)")

    p = sub.add_parser("strategies", help="trainable parameters per fine-tuning strategy (md + csv)")
    p.add_argument("model", type=_one_of("model", [m["name"] for m in names["models"]]),
                   help="model name, see `tlunet models`")
    p.add_argument("--strategies", default="wang2023",
                   help="a preset set (wang2023, cheng2021_vunet, cheng2021_xunet) or presets joined by ';' "
                        "(default: %(default)s)")
    p.add_argument("--input-shape", type=_shape, help="e.g. 256,256,1 (default: the model's paper's shape)")
    p.add_argument("--classes", type=int, default=1, help="output classes (default: %(default)s)")
    p.add_argument("--reference", help="model to compare against, e.g. unet (Wang 2023's 31M U-Net)")
    p.add_argument("--out", help="write OUT.md and OUT.csv")


def _add_experiment(sub, names):
    p = sub.add_parser("experiment", help="run a paper's experiment (e.g. wang2023_fetal_head --quick)")
    p.add_argument("name", nargs="?", help="a shipped experiment (" + ", ".join(names["experiments"]) +
                   "), or a config.yaml path")
    p.add_argument("--list", action="store_true", help="list the experiments that ship with tlunet")
    p.add_argument("--quick", action="store_true", help="the quick CPU profile (< 10 min)")
    p.add_argument("--profile", help="a profile of the config (`tlunet experiment --list` names each experiment's), "
                                     "e.g. full")
    p.add_argument("--data", help="override the data root (HC18: `download` fetches the official files)")
    p.add_argument("--encoder-weights", help="pretrained encoder weights file for the runs that fine-tune "
                                             "an ImageNet encoder (used when ImageNet cannot be downloaded)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any config key, e.g. --set training.epochs=5 --set pretrain.data.root=/data/ecssd")
    p.add_argument("--epochs", type=int, help="override the epochs")
    p.add_argument("--tensorboard", action="store_true", help="TensorBoard logs in each run's stage folders")
    p.add_argument("--distribute", choices=["mirrored", "multi_worker"],
                   help="tf.distribute: all local GPUs, or the workers TF_CONFIG names (run the same command on each)")
    p.add_argument("--out", default="results", help="results folder (default: %(default)s)")


def _add_train(sub, names):
    p = sub.add_parser("train", help="train one model on a data folder",
                       description="Train one model on a folder of images and masks (or HC18). Without "
                                   "--encoder-weights the model starts from random weights, so every layer "
                                   "must train (--strategy all); a strategy that freezes part of it needs weights.")
    models = [m["name"] for m in names["models"] if m["spatial_dims"] == 2]  # the image runner's
    p.add_argument("--model", required=True, type=_one_of("model", models), help="one of: " + ", ".join(models))
    p.add_argument("--data", required=True, help="data root: a folder with images/ and masks/ (--kind pairs) "
                                                 "or the HC18 layout (--kind hc18)")
    p.add_argument("--kind", default="pairs", type=_one_of("data kind", names["data_kinds"]),
                   help=f"one of {', '.join(names['data_kinds'])} (default: %(default)s)")
    p.add_argument("--layout", default="generic", type=_one_of("layout", names["layouts"]),
                   help=f"paired-folder layout, one of {', '.join(names['layouts'])} (default: %(default)s)")
    p.add_argument("--image-size", type=_shape, default=(256, 256), help="H,W the images are resized to "
                   "(default: 256,256)")
    p.add_argument("--channels", type=_channels, default="auto", help="auto (3 when the images have colour, "
                   "else 1), 1 (grey) or 3 (RGB) (default: %(default)s)")
    p.add_argument("--strategy", default="all", type=_one_of("strategy", list(names["strategies"])),
                   help="which layers train (default: %(default)s). " + _strategy_help(names))
    p.add_argument("--encoder-weights", default=None, help="imagenet (needs the network) or a weights file "
                   "(default: none, random weights)")
    p.add_argument("--epochs", type=int, default=20, help="(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="(default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: %(default)s)")
    p.add_argument("--loss", default="bce_dice", type=_one_of("loss", names["losses"]),
                   help=f"one of {', '.join(names['losses'])} (default: %(default)s)")
    p.add_argument("--augment", default=None, type=_one_of("augmentation", names["augment"]),
                   help=f"augmentation preset, one of {', '.join(names['augment'])} (default: none)")
    p.add_argument("--patience", type=int, default=None, help="early-stopping patience in epochs (default: none)")
    p.add_argument("--holdout", type=float, default=0.15, help="validation and test fraction each, split by "
                   "subject (default: %(default)s)")
    p.add_argument("--subject", default=None, metavar="REGEX", help="--kind pairs: a regular expression whose first "
                   "group in a file name is its subject, so one subject's images stay on one side of the split, "
                   "e.g. '^(p\\d+)_' for p01_a.png (default: each image its own subject)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--deterministic", action="store_true")
    p.add_argument("--mixed-precision", choices=["mixed_float16", "mixed_bfloat16"],
                   help="Keras mixed-precision policy (default: float32 throughout)")
    p.add_argument("--xla", action="store_true", help="jit_compile the training step")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any config key, e.g. --set training.lr_schedule.name=cosine (checked like a config file)")
    p.add_argument("--lr-schedule", choices=["constant", "cosine", "poly", "plateau"],
                   help="learning-rate schedule (options via a config: training.lr_schedule) (default: constant)")
    p.add_argument("--tensorboard", action="store_true", help="TensorBoard logs in the run's stage folder")
    p.add_argument("--distribute", choices=["mirrored", "multi_worker"],
                   help="tf.distribute: all local GPUs, or the workers TF_CONFIG names (run the same command on "
                        "each) (default: one device)")
    p.add_argument("--name", default="train", help="results sub-folder (default: %(default)s)")
    p.add_argument("--out", default="results", help="(default: %(default)s)")


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


def _add_evaluate(sub, names):
    p = sub.add_parser("evaluate", help="Dice, mIoU, pixel accuracy (and on HC18 the challenge's DF, ADF, full-size "
                       "Dice and Hausdorff) of a model")
    p.add_argument("model", help="a .keras file")
    p.add_argument("--data", required=True, help="data root (a run's own data: its test cases are scored)")
    p.add_argument("--split", choices=["test", "val", "train", "all"],
                   help="which cases of the run's split to score when MODEL is a run's model.keras and --data is "
                        "the run's data (default: test); other data is scored whole (all)")
    p.add_argument("--kind", type=_one_of("data kind", names["data_kinds"]),
                   help="default: the run's data.kind when MODEL is a run's model.keras, else pairs")
    p.add_argument("--layout", type=_one_of("layout", names["layouts"]),
                   help="paired-folder layout. Default: the run's data.layout, else generic")
    p.add_argument("--csv", help="write per-case metrics here")
    p.add_argument("--image-size", type=_shape, help="H,W to evaluate at, for a model built with any input size")
    _add_run_setting_flags(p)

    p = sub.add_parser("ensemble", help="one model averaging several trained models' probabilities (.keras)")
    p.add_argument("models", nargs="+", help="two or more .keras files: runs' model.keras files of one split "
                   "(checked) or bare models")
    p.add_argument("--out", required=True, help="folder for model.keras and config.yaml (new or empty)")

    p = sub.add_parser("predict", help="folder of images -> masks, overlays, predictions.csv")
    p.add_argument("model", help="a .keras file")
    p.add_argument("input", help="folder of images")
    p.add_argument("output", help="output folder")
    p.add_argument("--pixel-size", type=float, help="mm per pixel, for head circumference")
    p.add_argument("--pixel-size-csv", help="HC18-style CSV with per-image pixel sizes")
    p.add_argument("--overwrite", action="store_true", help="replace files in OUTPUT that predict did not write")
    _add_run_setting_flags(p)


def _add_export(sub, names):
    p = sub.add_parser("export", help="SavedModel (uint8 or float32 [0, 1] images of any size), LiteRT or ONNX file")
    formats = names["export_formats"]  # tlunet.export.EXPORT_FORMATS
    by_suffix = ", ".join(f"{name} for *{suffix}" for name, f in formats.items() for suffix in f["suffixes"])
    directory = next(name for name, f in formats.items() if not f["suffixes"])
    p.add_argument("model", help="a .keras file: a segmentation model (probability maps) or a classifier (class "
                   "probabilities; class names from the run's config.yaml)")
    p.add_argument("output", help=f"{formats[directory]['label']} directory, or a "
                   f"{' / '.join(s for f in formats.values() for s in f['suffixes'])} file (must not exist)")
    p.add_argument("--format", choices=list(formats),
                   help=f"default: {by_suffix}, else {directory}. LiteRT and ONNX files take float32 images in "
                        "[0, 1] at the model's input size")
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


def build_parser(names):
    """The `tlunet` parser; `names` is the catalog (`tlunet_cli.catalog()`)."""
    parser = argparse.ArgumentParser(prog="tlunet", description="Transfer-learning U-Nets (Keras 3).")
    parser.add_argument("--version", action="version", version=f"tlunet {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_models, _add_experiment, _add_train, _add_evaluate, _add_export):
        add(sub, names)
    for p in sub.choices.values():  # every command that loads TensorFlow can show its log lines
        if p.prog.split()[-1] not in ("models",):
            p.add_argument("-v", "--verbose", action="store_true",
                           help="TensorFlow's own log lines (and Keras progress bars)")
    return parser
