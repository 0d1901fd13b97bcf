"""Inference speed of tlunet models: batch-1 latency and batch-32 throughput, for the Keras model
(eager call, and `predict_on_batch`'s compiled function), the same with XLA (`jit_compile=True`),
and the exported SavedModel (`tlunet.export`, its float32 `serve_model` endpoint), interleaved.

    python benchmarks/inference.py [--models mobilenetv2_unet,vgg16_unet] [--size 224]
"""

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from common import device_name, forward_flops, interleaved, matmul_peak, random_batch  # noqa: E402


def candidates(model, x, tmp):
    from tlunet.export import export_savedmodel
    xt = tf.constant(x)
    eager = lambda: model(xt, training=False).numpy()  # noqa: E731
    model.compile(jit_compile=False)
    graph = lambda: model.predict_on_batch(x)  # noqa: E731
    xla_model = keras.models.clone_model(model)
    xla_model.set_weights(model.get_weights())
    xla_model.compile(jit_compile=True)
    xla = lambda: xla_model.predict_on_batch(x)  # noqa: E731
    path = export_savedmodel(model, os.path.join(tmp, f"sm_{model.name}_{len(x)}"))
    loaded = tf.saved_model.load(path)
    saved = lambda: loaded.serve_model(xt).numpy()  # noqa: E731
    return {"Keras eager call": eager, "Keras predict_on_batch": graph, "XLA (jit_compile=True)": xla,
            "SavedModel": saved}, loaded


def main(argv=None):
    import tlunet

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mobilenetv2_unet,vgg16_unet")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    peak = matmul_peak()
    print(f"\nInference, {args.size}x{args.size}x3 — {device_name()}, measured float32 matmul peak "
          f"{peak / 1e9:.0f} GFLOP/s\n")
    print("| model | GFLOPs/img | runtime | batch-1 latency (ms) | batch-32 img/s | % of peak (batch 32) |")
    print("|---|---:|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model = tlunet.build_model(name, (args.size, args.size, 3))
            flops = forward_flops(model)
            results = {}
            for batch in (1, 32):
                x, _ = random_batch((args.size, args.size, 3), batch)
                fns, keep = candidates(model, x, tmp)
                steps = 5 if batch == 1 else 1
                results[batch] = interleaved(fns, args.rounds, steps)
                del keep
            for runtime in results[1]:
                ips = 32 / results[32][runtime]
                print(f"| {name} | {flops / 1e9:.2f} | {runtime} | {1000 * results[1][runtime]:.1f} | "
                      f"{ips:.1f} | {100 * flops * ips / peak:.0f}% |")
            keras.backend.clear_session()
    return 0


if __name__ == "__main__":
    sys.exit(main())
