"""3D costs: training-step memory and speed at 64^3 and 96^3 patches, and whole-volume
sliding-window inference time for a 512x512x64 CT volume.

Each measurement runs in a fresh subprocess so its peak memory is its own: on CPU the peak
resident set size of the process (`ru_maxrss`) and its rise over the same process with the model
built but not yet run; on a GPU TensorFlow's peak allocator figure.

    python benchmarks/volume.py [--models resnet18_3d_unet unet3d] [--patches 64 96] [--batch 2]
                                [--steps 3] [--no-inference] [--overlap 0.5]

Prints a Markdown table (the README's 3D benchmark table comes from it).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _peak_mb():
    import tensorflow as tf
    if tf.config.list_physical_devices("GPU"):
        return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure_train(model_name, patch, batch, steps):
    import keras
    import numpy as np

    import tlunet
    from common import device_name
    model = tlunet.build_model(model_name, input_shape=(patch, patch, patch, 1))
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.random((batch, patch, patch, patch, 1), dtype=np.float32)
    y = (x > 0.5).astype(np.float32)
    built = _peak_mb()
    model.train_on_batch(x, y)  # trace + first step
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    seconds = (time.perf_counter() - start) / steps
    peak = _peak_mb()
    return {"kind": "train", "model": model_name, "patch": patch, "batch": batch, "device": device_name(),
            "params": model.count_params(), "step_s": seconds, "patches_per_s": batch / seconds,
            "peak_mb": peak, "rise_mb": peak - built}


def measure_inference(model_name, patch, overlap, volume_shape=(64, 512, 512)):
    import numpy as np

    import tlunet
    from common import device_name
    from tlunet.inference import sliding_window_predict, window_starts
    model = tlunet.build_model(model_name, input_shape=(patch, patch, patch, 1))
    volume = np.random.default_rng(0).random(volume_shape, dtype=np.float32)
    windows = int(np.prod([len(window_starts(s, patch, overlap)) for s in volume_shape]))
    sliding_window_predict(model, volume[:patch, :patch, :patch], batch_size=2)  # trace outside the timing
    built = _peak_mb()
    start = time.perf_counter()
    out = sliding_window_predict(model, volume, overlap=overlap, batch_size=2)
    seconds = time.perf_counter() - start
    peak = _peak_mb()
    assert out.shape == (*volume_shape, 1)
    return {"kind": "inference", "model": model_name, "patch": patch, "overlap": overlap,
            "device": device_name(), "windows": windows, "seconds": seconds, "peak_mb": peak,
            "rise_mb": peak - built}


def _subprocess(args):
    cmd = [sys.executable, os.path.abspath(__file__), "--one", json.dumps(args)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1], **args}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet18_3d_unet", "unet3d"])
    p.add_argument("--patches", nargs="+", type=int, default=[64, 96])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--overlap", type=float, default=0.5)
    p.add_argument("--inference-patch", type=int, default=64)
    p.add_argument("--no-inference", action="store_true")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        job = json.loads(args.one)
        result = measure_train(**job["train"]) if "train" in job else measure_inference(**job["inference"])
        print(json.dumps(result))
        return 0

    rows = []
    for model in args.models:
        for patch in args.patches:
            rows.append(_subprocess({"train": {"model_name": model, "patch": patch, "batch": args.batch,
                                               "steps": args.steps}}))
            print(rows[-1], file=sys.stderr)
    inference = []
    if not args.no_inference:
        for model in args.models:
            inference.append(_subprocess({"inference": {"model_name": model, "patch": args.inference_patch,
                                                        "overlap": args.overlap}}))
            print(inference[-1], file=sys.stderr)

    device = next((r["device"] for r in rows + inference if "device" in r), "?")
    print(f"\nTraining step, batch {args.batch}, Adam, BCE ({device}):\n")
    print("| model | patch | parameters | s / step | patches / s | peak memory (MB) | rise over built model (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['train']['model_name']} | {r['train']['patch']}³ | — | failed: {r['error'][:60]} | | | |")
            continue
        print(f"| {r['model']} | {r['patch']}³ | {r['params']:,} | {r['step_s']:.2f} | {r['patches_per_s']:.2f} | "
              f"{r['peak_mb']:,.0f} | {r['rise_mb']:,.0f} |")
    if inference:
        print(f"\nSliding-window inference of a 512×512×64 volume, {args.inference_patch}³ windows, overlap "
              f"{args.overlap}, Gaussian blending, batch 2 ({device}):\n")
        print("| model | windows | seconds | peak memory (MB) | rise over built model (MB) |")
        print("|---|---:|---:|---:|---:|")
        for r in inference:
            if "error" in r:
                print(f"| {r['inference']['model_name']} | — | failed: {r['error'][:60]} | | |")
                continue
            print(f"| {r['model']} | {r['windows']} | {r['seconds']:.1f} | {r['peak_mb']:,.0f} | {r['rise_mb']:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
