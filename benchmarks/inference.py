"""Inference speed of tlunet models: batch-1 latency and batch-32 throughput, for the Keras model
(eager call, and `predict_on_batch`'s compiled function), the same with XLA (`jit_compile=True`),
and the exported SavedModel (`tlunet.export`, its float32 `serve_model` endpoint), interleaved.

Then the point-of-care table: one image at a time on one CPU thread (a phone or an ultrasound
cart), mobilenetv2_unet at 256x384x1, for the SavedModel, the LiteRT file in float32 and int8
(calibrated on synthetic fetal-head frames) and ONNX Runtime, in a child process whose TensorFlow
uses one thread.

    python benchmarks/inference.py [--models mobilenetv2_unet,vgg16_unet] [--size 224]
    python benchmarks/inference.py --table point-of-care [--poc-model mobilenetv2_unet] [--poc-size 256,384]
"""

import argparse
import os
import subprocess
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


def point_of_care(name, size, rounds):
    """ms per image, batch 1, one CPU thread: SavedModel, LiteRT float32 and int8, ONNX Runtime."""
    import importlib.util

    import tlunet
    from tlunet.data.phantoms import fetal_head
    from tlunet.export import export_model, export_savedmodel, load_litert

    print(f"\nPoint of care: {name} at {size[0]}x{size[1]}x1, one image at a time on 1 CPU thread "
          f"({device_name()})\n")
    model = tlunet.build_model(name, (*size, 1))
    x, _ = random_batch((*size, 1), 1)
    xt = tf.constant(x)
    # int8 ranges calibrated on synthetic fetal-head frames (random weights: the speed is what counts)
    frames = [fetal_head(size, seed=s)["image"][..., None] for s in range(16)]
    fns, sizes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        saved = tf.saved_model.load(export_savedmodel(model, os.path.join(tmp, "sm")))
        fns["SavedModel (TF, 1 thread)"] = lambda: saved.serve_model(xt).numpy()  # noqa: E731
        for label, quantize in (("LiteRT float32", None), ("LiteRT int8", "int8")):
            path = export_model(model, os.path.join(tmp, f"{quantize or 'float32'}.tflite"), format="litert",
                                quantize=quantize, representative_data=frames if quantize else None)
            sizes[label] = os.path.getsize(path)
            fns[label] = (lambda run: lambda: run(x))(load_litert(path, num_threads=1))
        if importlib.util.find_spec("tf2onnx") and importlib.util.find_spec("onnxruntime"):
            import onnxruntime as ort
            path = export_model(model, os.path.join(tmp, "m.onnx"), format="onnx")
            sizes["ONNX Runtime float32"] = os.path.getsize(path)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
            session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            fns["ONNX Runtime float32"] = lambda: session.run(None, {"images": x})[0]  # noqa: E731
        times = interleaved(fns, rounds, steps=5)
    base = times["SavedModel (TF, 1 thread)"]
    print("| runtime | ms per image | vs SavedModel | file MB |")
    print("|---|---:|---:|---:|")
    for label, t in times.items():
        mb = f"{sizes[label] / 1e6:.1f}" if label in sizes else "—"
        print(f"| {label} | {1000 * t:.1f} | {base / t:.2f}x | {mb} |")
    return 0


def main(argv=None):
    import tlunet

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mobilenetv2_unet,vgg16_unet")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--table", choices=["all", "standard", "point-of-care"], default="all")
    p.add_argument("--poc-model", default="mobilenetv2_unet")
    p.add_argument("--poc-size", default="256,384", help="H,W of the point-of-care table")
    args = p.parse_args(argv)
    if args.table == "point-of-care":
        # before TensorFlow runs anything: its thread pools are fixed once created
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        return point_of_care(args.poc_model, tuple(int(v) for v in args.poc_size.split(",")), args.rounds)
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
    if args.table == "all":  # a fresh process, so that its TensorFlow can be held to one thread
        sys.stdout.flush()
        return subprocess.run([sys.executable, os.path.abspath(__file__), "--table", "point-of-care",
                               "--poc-model", args.poc_model, "--poc-size", args.poc_size,
                               "--rounds", str(args.rounds)]).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
