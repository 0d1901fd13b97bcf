"""The `tlunet` command line."""

import argparse
import os
import sys


def _shape(text):
    try:
        return tuple(None if p.strip().lower() == "none" else int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes like 256,256,3, got {text!r}")


def _cmd_models(args):
    import tlunet
    from tlunet.finetune import trainable_params

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
    import tlunet
    from tlunet.finetune import PRESET_SETS, strategy_report

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
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"tlunet {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
