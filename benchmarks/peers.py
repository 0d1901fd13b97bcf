"""tlunet beside the PyTorch tools a user would otherwise pick, on the same work, CPU and threads:
segmentation-models-pytorch (smp) for 2D, MONAI for 3D.

Sections (`--only`, default all four):

- train2d: one training step (batch 8, Adam, binary cross-entropy; forward + backward + update) at
  256x256x3: tlunet `mobilenetv2_unet` vs smp `Unet("mobilenet_v2")`, tlunet `vgg16_unet` vs smp
  `Unet("vgg16")`; forward FLOPs per image of both, and how the two architectures differ.
- infer2d: batch-1 latency and batch-32 throughput at 256x256x3: tlunet's exported SavedModel
  (`tlunet.export.export_savedmodel`, its `serve_model` endpoint) vs the smp model in eager PyTorch
  (`torch.inference_mode`) and as TorchScript (`torch.jit.trace` + `torch.jit.freeze`).
- train3d: one training step at 64^3 and 96^3, batch 2, Adam, BCE: tlunet `unet3d` (nnU-Net widths
  32-320) vs MONAI `DynUNet` with the same widths, depth, kernels, BatchNorm and ReLU; peak resident
  memory of each process.
- sliding: a 512x512x64 volume in 64^3 windows, overlap 0.5, Gaussian blending (sigma = 0.125 x
  window on both), 2 windows per forward pass: `tlunet.inference.sliding_window_predict` vs
  `monai.inferers.sliding_window_inference`, with those two 3D models; seconds and peak memory.

Each framework runs in a worker process of its own, a fresh pair for every row, so the peak
resident set size (`ru_maxrss`) of a worker is that row's, and neither framework's thread pools
touch the other's. Both are held to `--threads` (default 2) threads: PyTorch `set_num_threads(T)`,
`set_num_interop_threads(1)`; TensorFlow intra-op T, inter-op `--tf-inter-op` (default 1, so each
side runs one op at a time on T threads). The parent interleaves the two workers as
`common.interleaved` does (warm-up, then rounds in which each candidate runs `steps` steps in
turn, timed inside its worker) and reports medians over the rounds. Ratio = peer time / tlunet
time: above 1 means tlunet is faster. CPU only (GPUs are hidden from both workers). Random weights
on both sides (`encoder_weights=None`): the speed does not depend on them. FLOPs are counted with
one rule on both sides, the one of `torch.utils.flop_counter.FlopCounterMode`: convolutions
(transposed and depthwise included) and matmuls, 2 per multiply-add, forward pass, per image.

    pip install -e .[bench]
    python benchmarks/peers.py [--only train2d infer2d train3d sliding] [--threads 2]
    python benchmarks/peers.py --quick      # tiny shapes, a few minutes: proves that it runs

Prints Markdown tables (the README's speed page takes them) and the version / thread lines.
"""

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SECTIONS = ("train2d", "infer2d", "train3d", "sliding")
PAIRS_2D = {  # tlunet model -> smp encoder
    "mobilenetv2": ("mobilenetv2_unet", "mobilenet_v2"),
    "vgg16": ("vgg16_unet", "vgg16"),
}
WIDTHS_3D = (32, 64, 128, 256, 320)  # tlunet.models.unet.UNET3D_FILTERS
NOISE = 0.03  # a ratio within 3 % of 1 counts as a tie (the other benchmarks' allowance)

FULL = dict(size=256, batch=8, infer_batch=32, patches=(64, 96), batch3d=2, volume=(64, 512, 512), window=64,
            rounds=5, steps=2, warmup=2, rounds3d=3, steps3d=2, rounds_sliding=3)
QUICK = dict(size=64, batch=2, infer_batch=4, patches=(32,), batch3d=2, volume=(32, 64, 64), window=32,
             rounds=3, steps=2, warmup=1, rounds3d=2, steps3d=1, rounds_sliding=2)


def _rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _numpy_batch(shape, batch, seed=0):
    """common.random_batch without importing TensorFlow (the PyTorch worker must not)."""
    rng = np.random.default_rng(seed)
    x = rng.random((batch, *shape), dtype=np.float32)
    return x, (x[..., :1] > 0.5).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Workers: one process per framework, driven over stdin/stdout with one JSON object per line.
# --------------------------------------------------------------------------------------------

class _Side:
    def __init__(self):
        self.fns, self.warm_fns, self.keep = {}, {}, []

    def run(self, name, steps):
        fn = self.fns[name]
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        return {"seconds": (time.perf_counter() - start) / steps}

    def warm(self, name, steps):
        fn = self.warm_fns.get(name, self.fns[name])
        for _ in range(steps):
            fn()
        return {}

    def peak(self):
        return {"peak_mb": _rss_mb()}


def keras_conv_flops(model):
    """Forward FLOPs per image of the convolutions and matmuls of a Keras model (nested models
    included), 2 per multiply-add: the rule of torch's FlopCounterMode, so both sides compare."""
    import keras
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += keras_conv_flops(layer)
            continue
        kernel = getattr(layer, "kernel", None)
        if kernel is None or not hasattr(layer, "output"):
            continue
        transposed = "Transpose" in type(layer).__name__
        positions = (layer.input if transposed else layer.output).shape[1:-1]  # spatial (Dense: leading) axes
        total += 2 * math.prod(kernel.shape) * math.prod(int(p) for p in positions)
    return total


class TFSide(_Side):
    def __init__(self, threads, inter_op):
        super().__init__()
        import tensorflow as tf
        # before TensorFlow runs anything: its thread pools are fixed once created
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
        sys.path.insert(0, HERE)
        import keras

        import tlunet
        self.tf, self.keras, self.tlunet = tf, keras, tlunet

    def hello(self):
        from common import device_name
        tf = self.tf
        return {"versions": f"TensorFlow {tf.__version__}, Keras {self.keras.__version__}, "
                            f"tlunet {self.tlunet.__version__}",
                "threads": f"TensorFlow intra-op {tf.config.threading.get_intra_op_parallelism_threads()}, "
                           f"inter-op {tf.config.threading.get_inter_op_parallelism_threads()}",
                "device": device_name(), "rss_mb": _rss_mb()}

    def _arch(self, model):
        """Skip taps (channels @ 1/stride), decoder widths and upsampling of a tlunet U-Net."""
        size = model.input_shape[1]
        names = {layer.name: layer for layer in model.layers}
        if "encoder" in names:
            pyramid = [tuple(int(d) for d in t.shape[1:]) for t in names["encoder"].outputs]
            skips = [f"{s[-1]}@/{size // s[0]}" for s in pyramid]
        else:
            skips = [f"{names[f'encoder_block{i}_conv2'].output.shape[-1]}@/{2 ** (i - 1)}"
                     for i in range(1, len(WIDTHS_3D))] + [f"{names['bottleneck_conv2'].output.shape[-1]}"
                                                          f"@/{2 ** (len(WIDTHS_3D) - 1)}"]
        stages, i = [], 0
        while f"decoder_stage{i}_conv1" in names:
            up = names[f"decoder_stage{i}_upsample"]
            stages.append({"filters": names[f"decoder_stage{i}_conv1"].filters,
                           "skip": f"decoder_stage{i}_concat" in names,
                           "upsample": "transposed conv" if "Transpose" in type(up).__name__ else "nearest"})
            i += 1
        return {"skips": skips[:-1], "bridge": skips[-1], "decoder": stages,
                "decoder_bn": "decoder_stage0_bn1" in names,
                "head_kernel": names["head_conv"].kernel_size[0]}

    def _info(self, model):
        return {"trainable": int(sum(math.prod(w.shape) for w in model.trainable_weights)),
                "params": int(model.count_params()), "gflops": keras_conv_flops(model) / 1e9,
                "arch": self._arch(model), "built_mb": _rss_mb()}

    def setup(self, kind, **p):
        keras, tlunet = self.keras, self.tlunet
        if kind in ("train2d", "train3d"):
            shape = (p["size"],) * (2 if kind == "train2d" else 3) + ((3,) if kind == "train2d" else (1,))
            model = tlunet.build_model(p["model"], shape)
            model.compile(optimizer=keras.optimizers.Adam(p["lr"]), loss="binary_crossentropy")
            x, y = _numpy_batch(shape, p["batch"])
            self.fns["step"] = lambda: model.train_on_batch(x, y)
            self.keep.append(model)
            return self._info(model)
        if kind == "infer2d":
            from tlunet.export import export_savedmodel
            shape = (p["size"], p["size"], 3)
            model = tlunet.build_model(p["model"], shape)
            info = self._info(model)
            tmp = tempfile.TemporaryDirectory()
            loaded = self.tf.saved_model.load(export_savedmodel(model, os.path.join(tmp.name, "sm")))
            self.keep += [tmp, loaded]
            for b in p["batches"]:
                xt = self.tf.constant(_numpy_batch(shape, b)[0])
                self.fns[f"savedmodel_b{b}"] = (lambda x: lambda: loaded.serve_model(x).numpy())(xt)
            return info
        if kind == "sliding":
            from tlunet.inference import sliding_window_predict, window_starts
            w = p["window"]
            model = tlunet.build_model("unet3d", (w, w, w, 1))
            volume = np.random.default_rng(0).random(p["volume"], dtype=np.float32)
            # warm-up volume of 3 windows: traces the batch of 2 and the last, partial batch of 1
            small = volume[:w, :w, :min(2 * w, volume.shape[2])]
            run = lambda v: sliding_window_predict(model, v, overlap=p["overlap"], batch_size=2,  # noqa: E731
                                                   blend="gaussian")
            self.fns["sliding"] = lambda: run(volume)
            self.warm_fns["sliding"] = lambda: run(small)
            self.keep.append(model)
            windows = math.prod(len(window_starts(s, w, p["overlap"])) for s in volume.shape)
            return {**self._info(model), "windows": windows}
        raise ValueError(kind)

    def tracing(self):
        """How many times the Keras predict function has been traced (retracing evidence)."""
        model = self.keep[0]
        fn = getattr(model, "predict_function", None)
        return {"traces": fn.experimental_get_tracing_count() if hasattr(fn, "experimental_get_tracing_count") else None}


def _torchvision_without_ops():
    """PyPI's torchvision is built against PyPI's CUDA torch; beside the CPU build of torch that
    tlunet's extras pin, its C ops do not load and `import torchvision` stops at
    `register_fake("torchvision::nms")` ('operator torchvision::nms does not exist'). smp needs only
    torchvision's model classes (VGG, MobileNetV2: plain torch.nn), so when the ops are missing the
    two schemas that import registers unconditionally are declared here (never called)."""
    import importlib.util

    import torch
    try:
        spec = importlib.util.find_spec("torchvision")
        lib = os.path.join(os.path.dirname(spec.origin), "_C.so") if spec else None
        if lib and os.path.exists(lib):
            torch.ops.load_library(lib)
            return False
    except (OSError, RuntimeError):
        pass
    shim = torch.library.Library("torchvision", "DEF")
    shim.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    shim.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _torchvision_without_ops.keep = shim
    return True


class TorchSide(_Side):
    def __init__(self, threads):
        super().__init__()
        # MONAI imports torch.utils.tensorboard, which imports TensorFlow when it can: hundreds of MB
        # of resident memory that are no part of the PyTorch side's cost
        sys.modules["tensorflow"] = None
        import torch
        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
        self.torch = torch
        self.shimmed = None

    def hello(self):
        import monai
        torch = self.torch
        self.shimmed = _torchvision_without_ops()
        import segmentation_models_pytorch as smp
        return {"versions": f"PyTorch {torch.__version__}, MONAI {monai.__version__}, "
                            f"segmentation-models-pytorch {smp.__version__}",
                "threads": f"PyTorch intra-op {torch.get_num_threads()}, inter-op {torch.get_num_interop_threads()}"
                           f", oneDNN {'on' if torch.backends.mkldnn.is_available() else 'off'}",
                "device": f"CPU, {os.cpu_count()} cores", "rss_mb": _rss_mb(),
                "torchvision_shim": self.shimmed}

    def _tensor(self, x):
        return self.torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))  # NHWC -> NCHW

    def _flops(self, model, x1):
        from torch.utils.flop_counter import FlopCounterMode
        was_training = model.training
        model.eval()
        with FlopCounterMode(display=False) as counter, self.torch.no_grad():
            model(x1)
        model.train(was_training)
        return counter.get_total_flops() / 1e9

    def _info(self, model, x1):
        return {"trainable": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
                "params": int(sum(p.numel() for p in model.parameters())), "gflops": self._flops(model, x1),
                "built_mb": _rss_mb()}

    def _smp_arch(self, model, x1):
        import torch.nn as nn
        size = x1.shape[-1]
        with self.torch.no_grad():
            feats = model.encoder(x1)
        shapes = [f"{f.shape[1]}@/{size // f.shape[-1]}" for f in feats]
        # smp's decoder drops the encoder's first feature map (the input, or VGG's full-resolution block 1)
        dropped = shapes[0] if feats[0].shape[1] != x1.shape[1] else None
        stages, previous = [], feats[-1].shape[1]  # the center block keeps the bridge's width
        for b in model.decoder.blocks:
            conv = b.conv1[0]
            stages.append({"filters": conv.out_channels, "skip": conv.in_channels > previous,
                           "upsample": b.interpolation_mode})
            previous = conv.out_channels
        return {"skips": shapes[1:-1], "bridge": shapes[-1], "dropped": dropped,
                "center": not isinstance(model.decoder.center, nn.Identity), "decoder": stages,
                "decoder_bn": any(isinstance(m, nn.BatchNorm2d) for m in model.decoder.modules()),
                "head_kernel": model.segmentation_head[0].kernel_size[0]}

    def _dynunet(self):
        from monai.networks.nets import DynUNet
        levels = len(WIDTHS_3D)
        return DynUNet(spatial_dims=3, in_channels=1, out_channels=1, kernel_size=[3] * levels,
                       strides=[1] + [2] * (levels - 1), upsample_kernel_size=[2] * (levels - 1),
                       filters=list(WIDTHS_3D), norm_name="batch", act_name="relu", deep_supervision=False,
                       res_block=False)

    def setup(self, kind, **p):
        torch = self.torch
        if kind in ("train2d", "train3d"):
            if kind == "train2d":
                import segmentation_models_pytorch as smp
                shape = (p["size"], p["size"], 3)
                model = smp.Unet(p["encoder"], encoder_weights=None, classes=1)  # logits
            else:
                shape = (p["size"],) * 3 + (1,)
                model = self._dynunet()
            x, y = (self._tensor(a) for a in _numpy_batch(shape, p["batch"]))
            info = self._info(model, x[:1])
            if kind == "train2d":
                info["arch"] = self._smp_arch(model, x[:1])
            model.train()
            opt = torch.optim.Adam(model.parameters(), p["lr"])
            loss_fn = torch.nn.BCEWithLogitsLoss()  # = sigmoid + BCE, as tlunet's model + loss

            def step():
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(x), y)
                loss.backward()
                opt.step()
                return loss.item()
            self.fns["step"] = step
            info["built_mb"] = _rss_mb()
            return info
        if kind == "infer2d":
            import warnings

            import segmentation_models_pytorch as smp
            shape = (p["size"], p["size"], 3)
            model = smp.Unet(p["encoder"], encoder_weights=None, classes=1, activation="sigmoid").eval()
            info = self._info(model, self._tensor(_numpy_batch(shape, 1)[0]))
            for b in p["batches"]:
                x = self._tensor(_numpy_batch(shape, b)[0])

                def eager(x=x):
                    with torch.inference_mode():
                        return model(x).numpy()
                self.fns[f"eager_b{b}"] = eager
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.compile
                    scripted = torch.jit.freeze(torch.jit.trace(model, x))
                self.keep.append(scripted)

                def script(x=x, scripted=scripted):
                    with torch.no_grad():
                        return scripted(x).numpy()
                self.fns[f"torchscript_b{b}"] = script
            return info
        if kind == "sliding":
            from monai.inferers import sliding_window_inference
            w = p["window"]
            model = self._dynunet().eval()
            volume = torch.from_numpy(np.random.default_rng(0).random(p["volume"], dtype=np.float32))[None, None]
            small = volume[..., :w, :w, :min(2 * w, volume.shape[-1])]

            def predictor(x):
                return torch.sigmoid(model(x))  # tlunet's unet3d ends in a sigmoid

            def run(v):
                with torch.inference_mode():
                    return sliding_window_inference(v, (w, w, w), 2, predictor, overlap=p["overlap"],
                                                    mode="gaussian", sigma_scale=0.125).numpy()
            self.fns["sliding"] = lambda: run(volume)
            self.warm_fns["sliding"] = lambda: run(small)
            interval = [max(int(w * (1 - p["overlap"])), 1) for _ in range(3)]  # MONAI's scan interval
            windows = math.prod(1 if s <= w else math.ceil((s - w) / i) + 1
                                for s, i in zip(p["volume"], interval))
            return {**self._info(model, volume[..., :w, :w, :w]), "windows": windows}
        raise ValueError(kind)


def worker_main(side, threads, inter_op):
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever a library prints goes to the log, not into the protocol
    impl, failure = None, None
    try:
        impl = TFSide(threads, inter_op) if side == "tf" else TorchSide(threads)
    except Exception as e:  # reported on the first request
        failure = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        try:
            if failure:
                raise RuntimeError(failure)
            answer = getattr(impl, op)(**request)
        except Exception as e:
            traceback.print_exc()
            answer = {"error": f"{type(e).__name__}: {e}"[:800]}
        protocol.write(json.dumps(answer, default=float) + "\n")
    return 0


# --------------------------------------------------------------------------------------------
# Parent: rows, interleaving, tables.
# --------------------------------------------------------------------------------------------

class WorkerError(RuntimeError):
    pass


class Worker:
    def __init__(self, side, args):
        self.side = side
        self.log = tempfile.TemporaryFile(mode="w+")
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
        if side == "torch":
            env["OMP_NUM_THREADS"] = str(args.threads)
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", side, "--threads", str(args.threads),
               "--tf-inter-op", str(args.tf_inter_op)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, env=env)
        self.hello = self.call("hello")

    def _tail(self, n=6):
        self.log.seek(0)
        lines = [s for s in self.log.read().splitlines() if s.strip()]
        return " | ".join(lines[-n:])

    def call(self, op, **kwargs):
        try:
            self.proc.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            self.proc.wait()
            raise WorkerError(f"{self.side} worker died (exit {self.proc.returncode}): {self._tail()}")
        answer = json.loads(line)
        if "error" in answer:
            raise WorkerError(f"{self.side}: {answer['error']}")
        return answer

    def close(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=120)
        except Exception:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def interleave(candidates, rounds, steps, warmup):
    """common.interleaved across processes: candidates are (label, worker, fn name); each worker
    times its own steps. Returns label -> median seconds per step."""
    for _, worker, name in candidates:
        if warmup:
            worker.call("warm", name=name, steps=warmup)
    times = {label: [] for label, _, _ in candidates}
    for _ in range(rounds):
        for label, worker, name in candidates:
            times[label].append(worker.call("run", name=name, steps=steps)["seconds"])
    return {label: statistics.median(t) for label, t in times.items()}


def _pair(args, tf_setup, torch_setup):
    tf_w = torch_w = None
    try:
        tf_w = Worker("tf", args)
        torch_w = Worker("torch", args)
        args.hellos.setdefault("tf", tf_w.hello)
        args.hellos.setdefault("torch", torch_w.hello)
        return tf_w, torch_w, tf_w.call("setup", **tf_setup), torch_w.call("setup", **torch_setup)
    except Exception:
        for w in (tf_w, torch_w):
            if w is not None:
                w.close()
        raise


def _ratio(peer, ours):
    return peer / ours if ours > 0 else float("nan")


def section_train2d(args, cfg):
    rows = []
    for key in args.pairs:
        model, encoder = PAIRS_2D[key]
        label = f'`{model}` vs smp `Unet("{encoder}")`'
        print(f"[train2d] {label} ...", file=sys.stderr, flush=True)
        common = {"size": cfg["size"], "batch": cfg["batch"], "lr": 1e-3}
        try:
            tf_w, torch_w, ours, peer = _pair(args, {"kind": "train2d", "model": model, **common},
                                              {"kind": "train2d", "encoder": encoder, **common})
            try:
                t = interleave([("tlunet", tf_w, "step"), ("peer", torch_w, "step")],
                               cfg["rounds"], cfg["steps"], cfg["warmup"])
            finally:
                tf_w.close()
                torch_w.close()
            rows.append({"model": model, "encoder": encoder, "ours": ours, "peer": peer, "t": t,
                         "ratio": _ratio(t["peer"], t["tlunet"])})
        except WorkerError as e:
            rows.append({"model": model, "encoder": encoder, "error": str(e)})
        print(f"[train2d] {rows[-1].get('t', rows[-1].get('error'))}", file=sys.stderr, flush=True)
    s, b = cfg["size"], cfg["batch"]
    print(f"\n### 2D training step: {s}x{s}x3, batch {b}, Adam, binary cross-entropy (forward + backward + update)\n")
    print("| tlunet | PyTorch peer | tlunet ms / step | peer ms / step | ratio (peer / tlunet) | "
          "GFLOPs / img, tlunet | GFLOPs / img, peer | ratio per FLOP | trainable params, tlunet | peer |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | smp Unet(\"{r['encoder']}\") | failed: {r['error'][:120]} | | | | | | | |")
            continue
        o, p = r["ours"], r["peer"]
        per_flop = r["ratio"] * o["gflops"] / p["gflops"]
        print(f"| {r['model']} | smp `Unet(\"{r['encoder']}\")` | {1000 * r['t']['tlunet']:.0f} | "
              f"{1000 * r['t']['peer']:.0f} | **{r['ratio']:.2f}** | {o['gflops']:.2f} | {p['gflops']:.2f} | "
              f"{per_flop:.2f} | {o['trainable']:,} | {p['trainable']:,} |")
    notes = [_arch_note(r) for r in rows if "error" not in r]
    if notes:
        print("\nRatio per FLOP: the ratio times tlunet's FLOPs over the peer's, i.e. achieved FLOP/s, tlunet over "
              "peer.\n\nArchitecture differences (channels@1/stride; decoder stages deepest first):\n")
        for note in notes:
            print(note)
    return rows


def _fmt_decoder(arch):
    ups = {s["upsample"] for s in arch["decoder"]}
    widths = "/".join(str(s["filters"]) for s in arch["decoder"])
    noskip = sum(1 for s in arch["decoder"] if not s["skip"])
    return (f"{len(arch['decoder'])} stages {widths}, {'/'.join(sorted(ups))} upsampling, "
            f"{'conv-BN-ReLU' if arch['decoder_bn'] else 'conv+ReLU (no BN)'}"
            f"{f', {noskip} stage(s) without a skip' if noskip else ''}, {arch['head_kernel']}x{arch['head_kernel']} head")


def _arch_note(r):
    o, p = r["ours"], r["peer"]
    oa, pa = o["arch"], p["arch"]
    dropped = f" (smp drops the encoder's {pa['dropped']} features)" if pa.get("dropped") else ""
    lines = [f"- **{r['model']} vs smp `Unet(\"{r['encoder']}\")`**: "
             f"tlunet skips {', '.join(oa['skips'])}, bridge {oa['bridge']}; "
             f"smp skips {', '.join(pa['skips'])}, bridge {pa['bridge']}"
             f"{' + a center block (2 conv-BN-ReLU)' if pa['center'] else ''}"
             f"{dropped}.",
             f"  Decoder: tlunet {_fmt_decoder(oa)}; smp {_fmt_decoder(pa)}.",
             f"  Trainable parameters {o['trainable']:,} vs {p['trainable']:,} ({o['trainable'] / p['trainable']:.2f}x), "
             f"forward FLOPs {o['gflops']:.2f} vs {p['gflops']:.2f} GFLOPs / img ({o['gflops'] / p['gflops']:.2f}x)."]
    return "\n".join(lines)


def section_infer2d(args, cfg):
    rows = []
    batches = (1, cfg["infer_batch"])
    for key in args.pairs:
        model, encoder = PAIRS_2D[key]
        print(f"[infer2d] {model} vs smp {encoder} ...", file=sys.stderr, flush=True)
        common = {"kind": "infer2d", "size": cfg["size"], "batches": list(batches)}
        try:
            tf_w, torch_w, ours, peer = _pair(args, {**common, "model": model}, {**common, "encoder": encoder})
            try:
                t = {}
                for b in batches:
                    t[b] = interleave([("tlunet", tf_w, f"savedmodel_b{b}"), ("eager", torch_w, f"eager_b{b}"),
                                       ("torchscript", torch_w, f"torchscript_b{b}")],
                                      cfg["rounds"], 5 if b == 1 else 1, 2)
            finally:
                tf_w.close()
                torch_w.close()
            rows.append({"model": model, "encoder": encoder, "t": t, "ours": ours, "peer": peer})
        except WorkerError as e:
            rows.append({"model": model, "encoder": encoder, "error": str(e)})
        print(f"[infer2d] {rows[-1].get('t', rows[-1].get('error'))}", file=sys.stderr, flush=True)
    s, n = cfg["size"], cfg["infer_batch"]
    print(f"\n### 2D inference: {s}x{s}x3, tlunet's exported SavedModel (`serve_model`) vs the smp model in PyTorch\n")
    print(f"| model | PyTorch runtime | batch-1 ms, tlunet | batch-1 ms, peer | ratio | batch-{n} img/s, tlunet | "
          f"batch-{n} img/s, peer | ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} vs {r['encoder']} | failed: {r['error'][:120]} | | | | | | |")
            continue
        t = r["t"]
        for runtime, label in (("eager", "eager (`inference_mode`)"), ("torchscript", "TorchScript (trace + freeze)")):
            print(f"| {r['model']} vs `Unet(\"{r['encoder']}\")` | {label} | {1000 * t[1]['tlunet']:.1f} | "
                  f"{1000 * t[1][runtime]:.1f} | **{_ratio(t[1][runtime], t[1]['tlunet']):.2f}** | "
                  f"{n / t[n]['tlunet']:.1f} | {n / t[n][runtime]:.1f} | **{_ratio(t[n][runtime], t[n]['tlunet']):.2f}** |")
    for r in rows:
        if "error" not in r:
            r["ratios"] = [_ratio(r["t"][b][rt], r["t"][b]["tlunet"]) for b in batches for rt in ("eager", "torchscript")]
    return rows


def section_train3d(args, cfg):
    rows = []
    for patch in cfg["patches"]:
        print(f"[train3d] {patch}^3 ...", file=sys.stderr, flush=True)
        common = {"kind": "train3d", "size": patch, "batch": cfg["batch3d"], "lr": 1e-4}
        try:
            tf_w, torch_w, ours, peer = _pair(args, {**common, "model": "unet3d"}, common)
            try:
                t = interleave([("tlunet", tf_w, "step"), ("peer", torch_w, "step")],
                               cfg["rounds3d"], cfg["steps3d"], 1)
                ours["peak_mb"] = tf_w.call("peak")["peak_mb"]
                peer["peak_mb"] = torch_w.call("peak")["peak_mb"]
            finally:
                tf_w.close()
                torch_w.close()
            rows.append({"patch": patch, "t": t, "ours": ours, "peer": peer, "ratio": _ratio(t["peer"], t["tlunet"])})
        except WorkerError as e:
            rows.append({"patch": patch, "error": str(e)})
        print(f"[train3d] {rows[-1].get('t', rows[-1].get('error'))}", file=sys.stderr, flush=True)
    print(f"\n### 3D training step: batch {cfg['batch3d']}, Adam, binary cross-entropy: tlunet `unet3d` vs MONAI "
          f"`DynUNet` (widths {'-'.join(map(str, WIDTHS_3D))})\n")
    print("| patch | tlunet s / step | MONAI s / step | ratio (MONAI / tlunet) | GFLOPs / patch, tlunet | MONAI | "
          "peak RSS MB, tlunet (rise over built model) | MONAI (rise) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['patch']}³ | failed: {r['error'][:120]} | | | | | | |")
            continue
        o, p = r["ours"], r["peer"]
        print(f"| {r['patch']}³ | {r['t']['tlunet']:.2f} | {r['t']['peer']:.2f} | **{r['ratio']:.2f}** | "
              f"{o['gflops']:.1f} | {p['gflops']:.1f} | {_peak_cell(o)} | {_peak_cell(p)} |")
    ok = [r for r in rows if "error" not in r]
    if ok:
        o, p = ok[0]["ours"], ok[0]["peer"]
        print(f"\nSame network on both sides: 5 levels, two 3x3x3 conv-BN-ReLU per level, 2x2x2 stride-2 transposed-conv "
              f"upsampling, concatenated skips, 1x1x1 head; trainable parameters {o['trainable']:,} (tlunet) vs "
              f"{p['trainable']:,} (MONAI). Differences: tlunet downsamples by 2x2x2 max-pooling and then convolves, "
              f"DynUNet by a stride-2 first convolution (the same conv FLOPs, no pooling); tlunet's transposed convs "
              f"carry a bias (the {o['trainable'] - p['trainable']:,} extra parameters); tlunet's model ends in a "
              f"sigmoid + BCE, MONAI's in logits + `BCEWithLogitsLoss`. Peak RSS includes each framework's own runtime "
              f"(TensorFlow + Keras + tlunet vs PyTorch + MONAI after import: {args.hellos['tf']['rss_mb']:,.0f} vs "
              f"{args.hellos['torch']['rss_mb']:,.0f} MB); the rise is over the process with the model built.")
    return rows


def _peak_cell(side):
    """A table cell: the peak resident MB of one side's worker, and (in brackets) its rise over the
    process with the model built."""
    return f"{side['peak_mb']:,.0f} ({side['peak_mb'] - side['built_mb']:,.0f})"


def section_sliding(args, cfg):
    d, h, w = cfg["volume"]
    win = cfg["window"]
    print(f"[sliding] {h}x{w}x{d} ...", file=sys.stderr, flush=True)
    common = {"kind": "sliding", "volume": list(cfg["volume"]), "window": win, "overlap": 0.5}
    rows = []
    try:
        tf_w, torch_w, ours, peer = _pair(args, common, common)
        try:
            for side in (tf_w, torch_w):
                side.call("warm", name="sliding", steps=1)
            before = tf_w.call("tracing")["traces"]
            t = interleave([("tlunet", tf_w, "sliding"), ("peer", torch_w, "sliding")], cfg["rounds_sliding"], 1, 0)
            after = tf_w.call("tracing")["traces"]
            ours["peak_mb"] = tf_w.call("peak")["peak_mb"]
            peer["peak_mb"] = torch_w.call("peak")["peak_mb"]
        finally:
            tf_w.close()
            torch_w.close()
        retraces = after - before if before is not None and after is not None else None
        rows.append({"t": t, "ours": ours, "peer": peer, "ratio": _ratio(t["peer"], t["tlunet"]), "retraces": retraces})
    except WorkerError as e:
        rows.append({"error": str(e)})
    print(f"[sliding] {rows[-1].get('t', rows[-1].get('error'))}", file=sys.stderr, flush=True)
    print(f"\n### Sliding-window inference: a {h}x{w}x{d} volume, {win}³ windows, overlap 0.5, Gaussian blending, "
          f"2 windows per pass (unet3d vs DynUNet above)\n")
    print("| windows, tlunet / MONAI | tlunet s | MONAI s | ratio (MONAI / tlunet) | peak RSS MB, tlunet (rise) | "
          "MONAI (rise) | tlunet retraces while timed |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| failed: {r['error'][:120]} | | | | | | |")
            continue
        o, p = r["ours"], r["peer"]
        print(f"| {o['windows']} / {p['windows']} | {r['t']['tlunet']:.1f} | {r['t']['peer']:.1f} | **{r['ratio']:.2f}** | "
              f"{_peak_cell(o)} | {_peak_cell(p)} | {r['retraces'] if r['retraces'] is not None else '?'} |")
    return rows


def _cpu_busy_s():
    """Seconds of CPU time the whole machine has spent busy (all cores), from /proc/stat; None
    elsewhere than Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s():
    """CPU seconds of this process and of its workers (all have exited and been waited for)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--pairs", nargs="+", choices=list(PAIRS_2D), default=list(PAIRS_2D), help="2D model pairs")
    p.add_argument("--quick", action="store_true", help="tiny shapes and few repeats: checks that it runs")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of each framework")
    p.add_argument("--tf-inter-op", type=int, default=1, help="TensorFlow inter-op threads")
    p.add_argument("--rounds", type=int, help="override the rounds of every section")
    p.add_argument("--worker", choices=["tf", "torch"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.threads, args.tf_inter_op)

    cfg = dict(QUICK if args.quick else FULL)
    if args.rounds:
        cfg.update(rounds=args.rounds, rounds3d=args.rounds, rounds_sliding=args.rounds)
    args.hellos = {}
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    busy_before, own_before = _cpu_busy_s(), _own_cpu_s()
    start = time.perf_counter()
    results = {}
    for section in SECTIONS:
        if section in args.only:
            results[section] = globals()[f"section_{section}"](args, cfg)
            sys.stdout.flush()

    print("\n### Setup\n")
    for side in ("tf", "torch"):
        h = args.hellos.get(side)
        if h:
            shim = " (torchvision's C ops missing beside the CPU torch: two op schemas declared so it imports)" \
                if h.get("torchvision_shim") else ""
            print(f"- {h['versions']} — {h['device']}; {h['threads']}{shim}")
    wall = time.perf_counter() - start
    busy_after = _cpu_busy_s()
    other = None if busy_before is None or busy_after is None else \
        max(0.0, (busy_after - busy_before) - (_own_cpu_s() - own_before))
    if other is not None:
        share = other / (wall * (os.cpu_count() or 1))
        print(f"- other processes used {other:,.0f} CPU-seconds during the run, {100 * share:.0f} % of the machine's "
              f"{os.cpu_count()} cores (1-min load average before it: {load_before:.2f})")
        if share > 0.05:
            print("- **not a clean measurement**: other processes shared the cores. PyTorch's OpenMP threads wait "
                  "for each other at every parallel region, so a descheduled thread stalls the rest and PyTorch "
                  "loses far more than TensorFlow's work-stealing pool does (seen here: steps 3-15x slower at 2 threads "
                  "than at 1 on a busy 2-core machine). Rerun on an idle machine.")
    print(f"- each framework in its own worker process (a fresh pair per row), interleaved A/B, medians of "
          f"{cfg['rounds']} rounds x {cfg['steps']} steps (2D training), {cfg['rounds']} rounds (2D inference), "
          f"{cfg['rounds3d']} x {cfg['steps3d']} (3D training), {cfg['rounds_sliding']} (sliding window); "
          f"{'--quick shapes; ' if args.quick else ''}wall time {wall:.0f} s")

    behind = []
    for r in results.get("train2d", []):
        if "error" not in r and r["ratio"] < 1 - NOISE:
            behind.append(f"train2d {r['model']} ({r['ratio']:.2f})")
    for r in results.get("infer2d", []):
        if "error" not in r and min(r["ratios"]) < 1 - NOISE:
            behind.append(f"infer2d {r['model']} (min {min(r['ratios']):.2f})")
    for r in results.get("train3d", []):
        if "error" not in r and r["ratio"] < 1 - NOISE:
            behind.append(f"train3d {r['patch']}³ ({r['ratio']:.2f})")
    for r in results.get("sliding", []):
        if "error" not in r and r["ratio"] < 1 - NOISE:
            behind.append(f"sliding ({r['ratio']:.2f})")
    failed = sum("error" in r for rows in results.values() for r in rows)
    print(f"\ntlunet at least as fast as the PyTorch peer on every row (3 % noise allowed): "
          f"{'yes' if not behind else 'NO — behind on ' + '; '.join(behind)}"
          f"{f'; {failed} row(s) failed' if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
