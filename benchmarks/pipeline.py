"""Input-pipeline throughput: tlunet's tf.data pipeline vs Keras' legacy ImageDataGenerator.

Both run the Wang 2023 augmentations on HC18 images held in memory at 256x256, batch 8, in the
same process; a third row measures how many images per second a `mobilenetv2_unet` training step
consumes, so the table shows whether training can ever wait for data.

    python benchmarks/pipeline.py [--data ../shared/data/hc18] [--seconds 10]

Needs `pip install -e .[bench]` (tf-keras provides ImageDataGenerator). Without the HC18 folder
it falls back to synthetic fetal-head phantoms of the same size.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def load_images(data, size, n):
    from tlunet.data import hc18_set, load_arrays
    from tlunet.data.phantoms import fetal_head

    if data and os.path.isdir(data):
        s = hc18_set(data)
        s = s.subset(range(min(n, len(s))))
        images, masks = load_arrays(s, size)
        return images, masks, f"HC18 ({len(images)} images from {data})"
    heads = [fetal_head(size, seed=i) for i in range(n)]
    return (np.stack([h["image"][..., None] for h in heads]), np.stack([h["mask"] for h in heads]),
            f"synthetic phantoms ({n}; HC18 folder not found)")


def rate(batches, seconds, batch_size, warmup=3):
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(it)
        n += batch_size
    return n / (time.perf_counter() - start)


def tlunet_rate(images, masks, batch_size, seconds):
    from tlunet.data import make_dataset
    ds = make_dataset(images, masks, batch_size=batch_size, augment="wang2023", seed=0, repeat=True)
    return rate(ds, seconds, batch_size)


def idg_rate(images, masks, batch_size, seconds):
    from tf_keras.preprocessing.image import ImageDataGenerator

    # ImageDataGenerator flips with p=0.5 only, so vertical flip is on at 0.5 (Wang: 0.1); masks use
    # nearest-neighbour interpolation (order 0) so they stay binary, like ours.
    args = dict(rotation_range=25, horizontal_flip=True, vertical_flip=True, fill_mode="constant")
    image_gen = ImageDataGenerator(rescale=1 / 255.0, **args)
    mask_gen = ImageDataGenerator(interpolation_order=0, **args)
    pairs = zip(image_gen.flow(images, batch_size=batch_size, seed=0),
                mask_gen.flow(masks[..., None].astype("float32"), batch_size=batch_size, seed=0))
    return rate(pairs, seconds, batch_size)


def train_step_rate(size, batch_size, seconds):
    import keras

    import tlunet
    model = tlunet.build_model("mobilenetv2_unet", input_shape=(*size, 1))
    model.compile(optimizer="adam", loss="binary_crossentropy")
    x = np.random.default_rng(0).random((batch_size, *size, 1), dtype=np.float32)
    y = (x > 0.5).astype("float32")
    model.train_on_batch(x, y)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 3 * batch_size:
        model.train_on_batch(x, y)
        n += batch_size
    keras.backend.clear_session()
    return n / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--data", default=os.path.join(here, "..", "..", "shared", "data", "hc18"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--images", type=int, default=279)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    size = (args.size, args.size)
    images, masks, source = load_images(args.data, size, args.images)
    ours = tlunet_rate(images, masks, args.batch_size, args.seconds)
    try:
        legacy = idg_rate(images, masks, args.batch_size, args.seconds)
    except ImportError:
        legacy = float("nan")
        print("tf-keras is not installed (pip install -e .[bench]); ImageDataGenerator row skipped")
    step = train_step_rate(size, args.batch_size, args.seconds)
    import tensorflow as tf
    print(f"\nInput pipeline, Wang 2023 augmentations, {size[0]}x{size[1]}x1, batch {args.batch_size}, "
          f"{source}; TF {tf.__version__}, {os.cpu_count()} CPU cores\n")
    print("| what | images/s | tlunet is |")
    print("|---|---:|---:|")
    print(f"| tlunet tf.data pipeline | {ours:.0f} | — |")
    print(f"| Keras ImageDataGenerator (tf-keras) | {legacy:.0f} | {ours / legacy:.1f}x faster (target >= 3x) |")
    print(f"| mobilenetv2_unet training step consumes | {step:.1f} | {ours / step:.1f}x the need (target >= 5x) |")
    ok = ours >= 3 * legacy and ours >= 5 * step
    print(f"\ntargets {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
