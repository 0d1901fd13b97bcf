"""Shared helpers for the benchmarks: timing, FLOPs from the graph, the machine's matmul peak."""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def interleaved(fns, rounds=5, steps=3, warmup=2):
    """Times each callable in `fns` (name -> fn doing one step) in alternating rounds, so drift of
    the machine hits every candidate alike. Returns name -> median seconds per step."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def forward_flops(model, batch=1):
    """FLOPs of one forward pass per image, counted by TensorFlow's profiler on the traced graph
    (a multiply-add counts 2)."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    spec = tf.TensorSpec([batch, *model.input_shape[1:]], tf.float32)
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    frozen = convert_variables_to_constants_v2(concrete)
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    info = tf.compat.v1.profiler.profile(graph=frozen.graph, options=opts)
    return info.total_float_ops / batch


def matmul_peak(n=2048, repeats=10):
    """Measured float32 matmul throughput (FLOP/s): a practical reference, not the hardware
    ceiling — oneDNN's convolution kernels can exceed a single TF matmul of this size."""
    a = tf.random.uniform((n, n))
    b = tf.random.uniform((n, n))
    f = tf.function(lambda: tf.linalg.matmul(a, b))
    f().numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        f().numpy()
    return 2 * n ** 3 * repeats / (time.perf_counter() - start)


def device_name():
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return details.get("device_name", "GPU")
    return f"CPU, {os.cpu_count()} cores"


def random_batch(shape, batch, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((batch, *shape), dtype=np.float32)
    return x, (x[..., :1] > 0.5).astype(np.float32)
