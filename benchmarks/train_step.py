"""Training-step throughput of tlunet's models beside the reference implementations.

- `mobilenetv2_unet` vs segmentation_models' `Unet("mobilenetv2")` (qubvel, imported with
  SM_FRAMEWORK=tf.keras, encoder_weights=None);
- `vgg16_unet` vs a plain Keras port of Cheng & Lam's V-Unet (keras.applications VGG16 with its
  layers in the same graph, skips taken with get_layer — what their description builds);
- tlunet's `mobilenetv2_unet` with XLA and with mixed precision, each alone.

Same input size, batch, optimizer (Adam) and loss (binary cross-entropy) for every pair; A/B runs
are interleaved and the median step time is reported with the ratio, FLOPs per image counted from
the graph and the achieved fraction of the machine's measured matmul peak (training ~ 3x forward).

    python benchmarks/train_step.py [--rounds 5] [--steps 3]

Needs `pip install -e .[reference]` for segmentation_models. Exit code 1 if tlunet is slower than a
reference (ratio < 1.0 beyond 3 % noise).
"""

import argparse
import os
import sys

os.environ.setdefault("SM_FRAMEWORK", "tf.keras")  # segmentation_models must see this before import
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402

from common import device_name, forward_flops, interleaved, matmul_peak, random_batch  # noqa: E402


def vunet_port(input_shape):
    """Cheng & Lam's V-Unet as one flat Keras graph (no nested encoder, no in-model preprocessing)."""
    from keras import layers
    inputs = keras.Input(input_shape)
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_tensor=inputs)
    x = vgg.get_layer("block5_conv3").output
    for name, f in (("block4_conv3", 512), ("block3_conv3", 256), ("block2_conv2", 128), ("block1_conv2", 64)):
        x = layers.Conv2DTranspose(f, 2, strides=2, padding="same")(x)
        x = layers.Concatenate()([x, vgg.get_layer(name).output])
        x = layers.Conv2D(f, 3, padding="same", activation="relu")(x)
        x = layers.Conv2D(f, 3, padding="same", activation="relu")(x)
    return keras.Model(inputs, layers.Conv2D(1, 1, activation="sigmoid")(x))


def sm_unet(input_shape):
    import segmentation_models as sm
    return sm.Unet("mobilenetv2", encoder_weights=None, input_shape=input_shape, classes=1,
                   activation="sigmoid")


def step_fn(model, shape, batch, jit=False):
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", jit_compile=jit)
    x, y = random_batch(shape, batch)
    return lambda: model.train_on_batch(x, y)


def main(argv=None):
    import tlunet

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--mobilenet-size", type=int, default=224)
    p.add_argument("--vgg-size", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args(argv)
    peak = matmul_peak()
    rows, ok = [], True

    def pair(label, ours, ref, shape, ref_name):
        nonlocal ok
        flops = forward_flops(ours)
        ref_flops = forward_flops(ref) if ref is not None else None
        fns = {"ours": step_fn(ours, shape, args.batch)}
        if ref is not None:
            fns["ref"] = step_fn(ref, shape, args.batch)
        t = interleaved(fns, args.rounds, args.steps)
        ips = {k: args.batch / v for k, v in t.items()}
        ratio = ips["ours"] / ips["ref"] if ref is not None else None
        if ratio is not None and ratio < 0.97:
            ok = False
        rows.append((label, shape, ips["ours"], flops, ref_name, ips.get("ref"), ref_flops, ratio))

    s = (args.mobilenet_size, args.mobilenet_size, 3)
    pair("mobilenetv2_unet", tlunet.build_model("mobilenetv2_unet", s), sm_unet(s), s,
         'segmentation_models Unet("mobilenetv2")')
    keras.backend.clear_session()
    s = (args.vgg_size, args.vgg_size, 3)
    pair("vgg16_unet", tlunet.build_model("vgg16_unet", s), vunet_port(s), s, "Keras port of Cheng & Lam's V-Unet")
    keras.backend.clear_session()

    # Training flags on tlunet's mobilenetv2_unet, each measured against the plain float32 step.
    s = (args.mobilenet_size, args.mobilenet_size, 3)
    flag_rows = []
    base = step_fn(tlunet.build_model("mobilenetv2_unet", s), s, args.batch)
    xla = step_fn(tlunet.build_model("mobilenetv2_unet", s), s, args.batch, jit=True)
    import tensorflow as tf
    policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
    keras.mixed_precision.set_global_policy(policy)
    mixed = step_fn(tlunet.build_model("mobilenetv2_unet", s), s, args.batch)
    keras.mixed_precision.set_global_policy("float32")
    t = interleaved({"float32": base, "XLA (jit_compile=True)": xla, policy: mixed}, args.rounds, args.steps)
    for name, sec in t.items():
        flag_rows.append((name, args.batch / sec, t["float32"] / sec))

    print(f"\nTraining step, batch {args.batch}, Adam, binary cross-entropy — {device_name()}, "
          f"measured float32 matmul peak {peak / 1e9:.0f} GFLOP/s\n")
    print("| model | input | tlunet img/s | GFLOPs/img (fwd) | % of peak | reference | ref img/s | ref GFLOPs/img | tlunet / ref |")
    print("|---|---|---:|---:|---:|---|---:|---:|---:|")
    for label, shape, ips, flops, ref_name, ref_ips, ref_flops, ratio in rows:
        pct = 100 * 3 * flops * ips / peak
        print(f"| {label} | {shape[0]}x{shape[1]}x{shape[2]} | {ips:.2f} | {flops / 1e9:.2f} | {pct:.0f}% | {ref_name} | "
              f"{ref_ips:.2f} | {ref_flops / 1e9:.2f} | {ratio:.2f} |")
    print(f"\nTraining flags, mobilenetv2_unet {s[0]}x{s[1]}x{s[2]}:\n")
    print("| flag | img/s | vs float32 |")
    print("|---|---:|---:|")
    for name, ips, speedup in flag_rows:
        print(f"| {name} | {ips:.2f} | {speedup:.2f}x |")
    print(f"\ntlunet at least as fast as every reference (3 % noise allowed): {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
