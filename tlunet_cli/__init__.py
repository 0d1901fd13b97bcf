"""The `tlunet` command line: argument parsing, and the answers that need no TensorFlow.

This package is separate from `tlunet` because importing `tlunet` imports TensorFlow (it registers
the custom objects saved models name), which takes seconds. `--help`, `--version`, `models` and
`experiment --list` answer from `catalog.json` (written by `python -m tlunet.catalog`); every other
command imports `tlunet.cli`, which does the work.
"""

import argparse
import difflib
import json
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def catalog():
    """The registries' names and the model table (`catalog.json`), as a dict."""
    with open(os.path.join(_HERE, "catalog.json"), encoding="utf-8") as f:
        return json.load(f)


def version():
    """tlunet's version, read from tlunet/_version.py as text (importing tlunet imports TensorFlow)."""
    import importlib.util
    import re

    spec = importlib.util.find_spec("tlunet")  # finds the package without running its __init__
    with open(os.path.join(spec.submodule_search_locations[0], "_version.py"), encoding="utf-8") as f:
        return re.search(r'^__version__ = "([^"]+)"$', f.read(), re.M).group(1)


def suggestion(name, choices):
    """' (did you mean X?)' for the closest of `choices` to `name`, or '' when none is close."""
    def fold(text):  # `Decoder`, `UNet`, `d-4` are near misses of `decoder`, `unet`, `D-4`
        return str(text).lower().replace("-", "_")
    by_folded = {fold(c): str(c) for c in choices}
    close = difflib.get_close_matches(fold(name), list(by_folded), n=1, cutoff=0.6)
    return f" (did you mean {by_folded[close[0]]!r}?)" if close else ""


def _one_of(what, choices):
    """An argparse type that takes one of `choices` and names the nearest for a misspelling."""
    def check(text):
        if text not in choices:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}{suggestion(text, choices)}; "
                                             f"choose from {', '.join(choices)}")
        return text
    check.__name__ = what  # argparse names the type in some messages
    return check


def _shape(text):
    try:
        return tuple(None if p.strip().lower() == "none" else int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes like 256,256,3, got {text!r}") from None


def _channels(text):
    if text not in ("auto", "1", "3"):
        raise argparse.ArgumentTypeError(f"expected auto, 1 or 3, got {text!r}")
    return text if text == "auto" else int(text)


def print_table(header, rows):
    """Columns padded to their widest cell, one row a line."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


MODEL_COLUMNS = ("model", "input", "params", "trainable", "paper", "description")


def _models(args, names):
    if args.input_shape or args.classes != 1:
        return None  # other shapes or heads: tlunet.cli builds them
    print_table(MODEL_COLUMNS, [(m["name"], m["input"], f"{m['params']:,}", f"{m['trainable']:,}", m["paper"],
                                m["description"]) for m in names["models"]])
    return 0


def _experiment_list(args, names):
    if args.name and not args.list:
        return None
    if not args.list:
        print("tlunet experiment: name an experiment (or a config.yaml); these ship with tlunet:\n", file=sys.stderr)
    for name, about in names["experiments"].items():
        print(f"{name:28s} {about}")
        print(f"{'':28s} profiles: {', '.join(names['profiles'].get(name, [])) or 'none'}")
    print("\nRun one with `tlunet experiment NAME --quick`; results go to ./results/NAME/.")
    return 0 if args.list else 2


# Commands (or cases of them) answered here; None from one means "tlunet.cli does it".
_LIGHT = {"models": _models, "experiment": _experiment_list}


def main(argv=None):
    """The `tlunet` console script: parses `argv`, answers or hands the command to `tlunet.cli`."""
    from tlunet_cli.parser import build_parser

    names = catalog()
    args = build_parser(names).parse_args(argv)
    light = _LIGHT.get(args.command)
    done = light(args, names) if light else None
    if done is not None:
        return done
    from tlunet.cli import run_command  # TensorFlow loads here, only for commands that need it

    return run_command(args)
