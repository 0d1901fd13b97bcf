"""Export for deployment.

- SavedModel (`export_savedmodel`): images of any size in (uint8 0-255 or float32 in [0, 1]),
  probabilities at that size out; for a classifier (`is_classifier`), (N, K) class probabilities
  out and its class names from a `class_names()` endpoint.
- LiteRT, formerly TFLite (`export_model(..., format="litert")`), optionally int8-quantised, and
  ONNX (`format="onnx"`): float32 images in [0, 1] at the model's fixed input size in, float32
  probabilities (a classifier's: (N, K)) out — for phones, ultrasound carts and runtimes without
  TensorFlow. `load_litert`
  runs a `.tflite` file; `quantization_report` measures what int8 costs in Dice.

The formats are one table, `EXPORT_FORMATS` (name -> `ExportFormat`: its suffixes, its writer and the
`EXPORT_OPTIONS` it takes); `check_export` checks a request against it, for `export_model` and for
`tlunet export`.
"""

import dataclasses
import functools
import hashlib
import importlib.util
import os
import re
import secrets
import shutil
import socket
import warnings

import keras
import numpy as np
import tensorflow as tf

from tlunet.postprocess import PostProcess, keep_largest_region  # noqa: F401  (tlunet.export.keep_largest_region)

INSTALL_HINT = "pip install 'tlunet[export]'"


def export_savedmodel(model, path, size=None, tta=None, largest_component=False, threshold=0.5, class_names=None):
    """Writes a SavedModel of a 2D segmentation model or image classifier, with three endpoints
    (a classifier, four).

    - `serve(images)`: (N, H, W, C) images of any H, W, either uint8 (0-255) or float32 in
      [0, 1], resized to the model's input size inside the graph (bilinear, antialiased) ->
      float32 probabilities: for a segmentation model (N, H, W, classes), resized back to (H, W);
      for a classifier (`is_classifier`: output (N, K), e.g. `tlunet.models.seg_to_classifier`)
      (N, K) class probabilities.
    - `serve_float(images)`: the same for float32 images in [0, 1] only.
    - `serve_model(images)`: the Keras model itself on float32 [0, 1] input at its own size (what
      `model.export()` gives; no resizing and no range check).
    - classifiers only, `class_names()`: the K class names, a 1-D string tensor in the order of the
      probabilities' columns (`loaded.class_names().numpy()` -> `[b"covid", ...]`).

    An empty batch (0, H, W, C) gives an empty result, float32 (0, H, W, classes) or for a
    classifier (0, K), from every endpoint (after the same channel and range checks), as a
    batching server may send one.

    Channels. `serve` and `serve_float` take the model's channel count, and for a one-channel
    (grey) model also RGB images, converted to grey as `tlunet predict` reads an RGB file (PIL's
    ITU-R 601-2 luma, L = (19595 R + 38470 G + 7471 B) / 65536, rounded for uint8), and for a
    three-channel model also grey images, repeated to RGB. Other channel counts (RGBA, ...) fail
    inside the graph with InvalidArgumentError naming the channels the model takes.

    Input dtypes. Called from Python on the loaded SavedModel (`tf.saved_model.load(path).serve(x)`)
    a NumPy array or tensor goes to the uint8 or the float32 version of `serve` by its dtype; any
    other dtype (float64, int32, ...) is refused with a ValueError ("Could not find matching
    concrete function"): cast first, e.g. `x.astype("float32")` for floats in [0, 1] (NumPy's
    `x / 255.0` is float64). Float input that is outside [0, 1], NaN or infinite fails inside the
    graph with InvalidArgumentError ("float32 images must be finite and in [0, 1]"), so 0-255
    values passed as floats are refused rather than read as a white image. Signatures
    (`loaded.signatures[...]`, TF Serving, other languages) hold one dtype each: `serve` and
    `serving_default` uint8, `serve_float` and `serve_model` float32. A signature called from
    Python with a NumPy array converts it to that dtype silently, so floats given to the uint8
    `serve` signature are truncated (0.5 -> 0, 300 -> 44) where no check can see them: give it
    uint8, or use `serve_float`, where a uint8 image becomes 0-255 floats and fails the check.

    The directory is written under a temporary name and renamed when complete, so an interrupted
    export never leaves something that looks like a finished SavedModel; an export that fails
    removes its temporary, and one killed outright (SIGKILL, power loss) leaves it for the next
    export into the same folder to remove (`_new_temporary`). Its folders and files get
    the permissions `os.makedirs` and `open` give (the umask's), so a server running as another
    user can read them where the umask allows it.

    Args:
        model: a Keras model taking float images in [0, 1]: a segmentation model (output (N, H,
            W, classes)) or a classifier (output (N, K) probabilities).
        path: output directory (must not exist).
        size: (H, W) to resize to when the model accepts any size (None dims); default: the
            model's own input size.
        tta: segmentation models only: None, or "flip" to average `serve`'s (and `serve_float`'s)
            probabilities of each image and of its left-right mirror, as an experiment run with
            `evaluation.tta: flip` evaluated it (twice the compute). `serve_model` stays the bare model.
        largest_component: segmentation models only: True to keep, in `serve`'s and `serve_float`'s
            probabilities, only the largest connected region of `probabilities >= threshold`
            (`keep_largest_region`, at the input's own size, after `tta` and the resize), as an
            experiment run with `evaluation.largest_component: true` evaluated it: a second blob
            reads 0. One-channel models only.
        threshold: the threshold that defines the regions of `largest_component` (unused otherwise).
        class_names: classifiers only: the K class names `class_names()` returns, in the order of the
            model's outputs (a run's `classes`); default "0", ..., "K-1".

    Returns:
        `path`.

    Raises:
        ValueError: `tta` or `largest_component` for a classifier, `class_names` for a segmentation
            model or not K distinct names, a 3D model, a model of any size without `size`.
        FileExistsError: `path` exists.
    """
    if is_classifier(model):
        return _export_classifier_savedmodel(model, path, size, tta, largest_component, class_names)
    if class_names is not None:
        raise ValueError(f"class_names name a classifier's outputs; {model.name!r} is a segmentation model "
                         f"(output {model.output_shape}): leave class_names at None")
    post = PostProcess(threshold=threshold, tta=tta, largest_component=largest_component)
    post.check_model(model)
    path, size, channels = _savedmodel_settings(model, path, size)
    classes = model.output_shape[-1]
    archive = _serving_archive(model, post.as_tf(model, size),  # tta, the resize back and the largest region
                               size, channels, lambda shape: [0, shape[1], shape[2], classes])
    return _write_archive(archive, path)


def is_classifier(model):
    """Whether `model` gives one probability vector per image, output (N, K) (as
    `tlunet.models.seg_to_classifier` builds), rather than probability maps."""
    shape = model.output_shape
    return isinstance(shape, tuple) and len(shape) == 2


def _export_classifier_savedmodel(model, path, size, tta, largest_component, class_names):
    """`export_savedmodel` of a classifier: `serve` resizes the images to the model's size and
    returns (N, K) class probabilities; `class_names()` returns the names."""
    classes = model.output_shape[-1]
    for option, value, default in (("tta", tta, None), ("largest_component", largest_component, False)):
        if value is not None and value is not False:  # the post-processing of probability maps
            raise ValueError(f"{option} post-processes a segmentation model's probability maps; {model.name!r} is a "
                             f"classifier (output (N, {classes}) class probabilities): leave {option} at {default}. "
                             f"Received: {option}={value!r}")
    names = _checked_class_names(class_names, classes, model)
    path, size, channels = _savedmodel_settings(model, path, size)

    def classify(images):  # the resize `PostProcess.as_tf` gives segmentation models, as training's PIL resize
        resized = tf.image.resize(images, size, method="bilinear", antialias=True)
        return tf.cast(model(resized, training=False), tf.float32)

    archive = _serving_archive(model, classify, size, channels, lambda shape: [0, classes])

    @tf.function(input_signature=[])
    def class_names_endpoint():
        return tf.constant(names, tf.string)

    archive.add_endpoint("class_names", class_names_endpoint)
    return _write_archive(archive, path)


def _checked_class_names(class_names, classes, model):
    """`class_names` as a list of `classes` distinct strings ("0", ..., "K-1" for None); ValueError otherwise."""
    if class_names is None:
        return [str(i) for i in range(classes)]
    if isinstance(class_names, (str, bytes)) or not hasattr(class_names, "__iter__"):
        raise ValueError(f"class_names must be a list of {classes} names. Received: class_names={class_names!r}")
    names = [str(name) for name in class_names]
    if len(names) != classes:
        raise ValueError(f"class_names has {len(names)} names ({', '.join(names)}); {model.name!r} outputs {classes} "
                         f"class probabilities. Received: class_names={class_names!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be distinct. Received: class_names={class_names!r}")
    return names


def _serving_archive(model, at_input_size, size, channels, empty_shape):
    """An `ExportArchive` tracking `model` with the endpoints `serve`, `serve_float` and `serve_model`.

    Args:
        at_input_size: float32 images in [0, 1] with the model's channels, any size -> probabilities.
        size: the model's (H, W), which `serve_model` takes.
        empty_shape: the result's shape for an empty batch, from the images' (dynamic) shape.
    """
    def spec(dtype):  # any channel count: `_model_channels` converts or refuses it in the graph
        return tf.TensorSpec([None, None, None, None], dtype, name="images")

    @tf.function
    def serve(images):
        if images.dtype == tf.uint8:
            return _unless_empty(at_input_size, tf.cast(_model_channels(images, channels), tf.float32) / 255.0,
                                 empty_shape)
        return _unless_empty(at_input_size, _model_channels(_unit_range(images), channels), empty_shape)

    # The uint8 trace first: it is the endpoint's signature (and serving_default).
    serve.get_concrete_function(spec(tf.uint8))
    serve.get_concrete_function(spec(tf.float32))

    @tf.function(input_signature=[spec(tf.float32)])
    def serve_float(images):
        return serve(images)  # the float32 trace above, called (not traced again)

    @tf.function(input_signature=[tf.TensorSpec([None, *size, channels], tf.float32, name="images")])
    def serve_model(images):
        return _unless_empty(lambda x: tf.cast(model(x, training=False), tf.float32), images, empty_shape)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serve)
    archive.add_endpoint("serve_float", serve_float)
    archive.add_endpoint("serve_model", serve_model)
    return archive


def _savedmodel_settings(model, path, size):
    """`export_savedmodel`'s arguments checked: (path, (H, W) to resize to, channels)."""
    path = os.fspath(path)
    if os.path.exists(path):
        raise FileExistsError(f"{path} already exists; export into a new directory")
    if len(model.input_shape) != 4:  # serve resizes 2D images; a volume model has no such endpoint
        raise ValueError(f"{model.name!r} takes {len(model.input_shape) - 2}D input {model.input_shape}; the SavedModel "
                         "export (images of any size) is for 2D models: export a 3D model as LiteRT or ONNX "
                         "(format='litert' / 'onnx', --format on the command line) or with model.export(path)")
    _, h, w, channels = model.input_shape
    size = tuple(size) if size is not None else (h, w)
    if None in size:
        raise ValueError(f"{model.name!r} accepts any input size; pass size=(H, W) to export it "
                         f"(each a multiple of its encoder's reduction). Received: size={size}")
    return path, size, channels


def _write_archive(archive, path):
    """Writes `archive` under a hidden temporary beside `path` and renames it into place; returns `path`."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = _new_temporary(parent, directory=True)
    try:
        archive.write_out(tmp, verbose=False)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _model_channels(images, channels):
    """`images` (N, H, W, any channels; uint8 or float32) with the `channels` a model takes: RGB to
    grey for a one-channel model (PIL's `convert("L")` luma, as `tlunet predict` reads an RGB file),
    grey repeated to RGB for a three-channel model, unchanged when they already match. Any other
    channel count fails inside the graph (InvalidArgumentError) with a message naming the
    channels the model takes. Float images are expected in [0, 1]."""
    other = {1: 3, 3: 1}.get(channels)
    takes = {1: "1 (grey) or 3 (RGB, converted to grey)",
             3: "3 (RGB) or 1 (grey, repeated to RGB)"}.get(channels, str(channels))
    found = tf.shape(images)[-1]
    ok = (found == channels) | (found == other) if other else found == channels
    check = tf.debugging.Assert(ok, [tf.strings.format(
        "serve: images have {} channels; this model takes " + takes, [found])])
    with tf.control_dependencies([check]):
        images = tf.identity(images)
    if other is not None:
        convert = (lambda: _grey(images)) if channels == 1 else (lambda: tf.tile(images, [1, 1, 1, 3]))
        images = tf.cond(found == channels, lambda: images, convert)
    return tf.ensure_shape(images, [None, None, None, channels])


def _grey(images):
    """(N, H, W, 3) RGB -> (N, H, W, 1) grey by PIL's `convert("L")` (ITU-R 601-2 luma in 16-bit
    fixed point, rounded), so a uint8 image gives the very values `read_image(..., channels=1)`
    reads from the same RGB file; float32 images take the same weights, unrounded."""
    weights = [19595, 38470, 7471]  # / 65536: PIL's 0.299, 0.587, 0.114
    if images.dtype == tf.uint8:
        luma = tf.reduce_sum(tf.cast(images, tf.int32) * weights, -1, keepdims=True)
        return tf.cast(tf.bitwise.right_shift(luma + 0x8000, 16), tf.uint8)
    luma = tf.reduce_sum(images * tf.constant(weights, tf.float32), -1, keepdims=True) / 65536.0
    return tf.minimum(luma, 1.0)  # the weights sum to 1; rounding must not leave [0, 1]


def _unless_empty(run, images, empty_shape):
    """`run(images)`, or for an empty batch float32 zeros of shape `empty_shape(tf.shape(images))`:
    a model's layers (convolutions, BatchNorm) fail on a batch of no images."""
    shape = tf.shape(images)
    return tf.cond(shape[0] > 0, lambda: run(images), lambda: tf.zeros(empty_shape(shape), tf.float32))


def _host_tag():
    """6 hex digits naming this machine in temporary names: a PID means something on its own host only."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def _alive(pid):
    """Whether process `pid` may exist on this machine: False only when it surely does not."""
    if os.name == "nt":  # os.kill ends the process there, whatever the signal: keep every temporary
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def _remove_leftovers(parent):
    """Removes the `.export-<pid>-<host>-*` temporaries in `parent` of exports on this machine whose
    process is gone (killed before it could clean up); never those of a live process (one whose PID
    was taken again keeps its leftover until that process ends), nor of another machine sharing
    the folder, where the PID says nothing."""
    pattern = re.compile(rf"\.export-(\d+)-{_host_tag()}-[0-9a-f]+(\.[a-z]+)?")
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        match = pattern.fullmatch(name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            path = os.path.join(parent, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                _remove(path)


def _new_temporary(parent, suffix="", directory=False):
    """Creates and returns a new hidden `.export-<pid>-<host>-<random><suffix>` file (or folder) in
    `parent`, first removing the temporaries that killed exports left there (`_remove_leftovers`).

    Made with a plain `os.open(..., 0o666)` / `os.mkdir` rather than `tempfile`, whose files are
    0600 and folders 0700 whatever the umask, so once renamed into place the export has the
    permissions the umask (and any default ACL) gives any other new file: a server running as
    another user can read it where they allow it."""
    _remove_leftovers(parent)
    for _ in range(100):
        tmp = os.path.join(parent, f".export-{os.getpid()}-{_host_tag()}-{secrets.token_hex(6)}{suffix}")
        try:
            if directory:
                os.mkdir(tmp)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent}: no free temporary name for an export")


def _unit_range(images):
    """`images` (float32), after an in-graph check that every value is finite and in [0, 1]."""
    lo, hi = tf.reduce_min(images), tf.reduce_max(images)
    ok = tf.reduce_all(tf.math.is_finite(images)) & (lo >= 0.0) & (hi <= 1.0)
    check = tf.debugging.Assert(ok, [
        "float32 images must be finite and in [0, 1] (uint8 images, 0-255, go to `serve` as "
        "uint8); found min", lo, "max", hi])
    with tf.control_dependencies([check]):
        return tf.identity(images)


# ------------------------------------------------------------------------------ the formats
@dataclasses.dataclass(frozen=True)
class ExportFormat:
    """One format `export_model` writes.

    Attributes:
        label: its name in messages ("LiteRT").
        suffixes: the endings of the file names that choose it (`format_for_path`) and that its
            output must have; empty for a directory.
        exporter: `exporter(model, path, size=..., **options)` writes it and returns `path`; it
            receives every `export_model` option and uses those it takes.
        options: the names of the `ExportOption`s it takes.
        packages: (module, pip name) pairs it needs installed.
    """

    label: str
    suffixes: tuple
    exporter: object
    options: frozenset = frozenset()
    packages: tuple = ()


@dataclasses.dataclass(frozen=True)
class ExportOption:
    """An option of `export_model` (and flag of `tlunet export`) that only some formats take.

    Attributes:
        flag: its `tlunet export` flag.
        unsupported: the message for a format that does not take it: `{option}` is the option as
            given, `{formats}` the formats that take it, `{format}` the one asked for, `{label}` its name.
        value: the one value it takes, when it takes one ("int8"); None for any.
        metavar: the flag's argument, shown where the option is asked for ("FOLDER").
        needs: (another option it needs, the message when that one is missing, with `{option}` and
            `{needed}`), or None.
    """

    flag: str
    unsupported: str
    value: str | None = None
    metavar: str = ""
    needs: tuple | None = None


_BARE = "{option} is built into SavedModel's serve endpoint only; a {label} file is the bare model "
EXPORT_OPTIONS = {
    "quantize": ExportOption(
        "--quantize", "{option} is for {formats} only. Received: {format}", value="int8",
        needs=("representative_data", "{option} needs {needed}: 100-500 images like the ones the model will see, "
                                      "to calibrate the int8 ranges (random images would calibrate them wrongly)")),
    "representative_data": ExportOption(
        "--representative", "{option} calibrates int8 quantisation, which is for {formats} only. Received: {format}",
        metavar="FOLDER", needs=("quantize", "{option} calibrates int8 quantisation; pass {needed} with it")),
    "validation_data": ExportOption(
        "--validation-data", "{option} compares a LiteRT file with the Keras model; use it with {formats}. "
                             "Received: {format}", metavar="FOLDER"),
    "tta": ExportOption("--tta", _BARE + "(average its output on the image and on its left-right mirror yourself)"),
    "largest_component": ExportOption(
        "--largest-component", _BARE + "(keep the largest region of its thresholded output yourself: "
                                       "tlunet.biometry.largest_component)"),
}


def _spell(name, value, cli, asked=False):
    """Option `name` as the caller wrote it: `quantize='int8'` or `--quantize int8`; data by name
    (`representative_data`, `--representative`, with its metavar when `asked` for)."""
    option = EXPORT_OPTIONS[name]
    if cli:
        shown = (option.metavar if asked else "") if option.metavar else value if isinstance(value, str) else ""
        return f"{option.flag} {shown}".rstrip()
    return name if option.metavar or value is None else f"{name}={value!r}"


def _spell_format(format, cli):
    return f"--format {format}" if cli else f"format={format!r}"


def check_export(format, path, options, cli=False):
    """The `ExportFormat` named `format`, once `options` are found to suit it and `path` to end in
    its suffix. Messages name the options as `export_model` takes them, or with `cli` as the
    `tlunet export` flags.

    Args:
        format: a key of `EXPORT_FORMATS`.
        path: the output path.
        options: {option name (a key of `EXPORT_OPTIONS`): value}; None and False are not given.
        cli: spell options as flags.

    Raises:
        ValueError: an unknown format, an option the format does not take or a value it cannot
            have, an option without another it needs (int8 without representative data), a path
            without the format's suffix.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"`format` must be one of {FORMATS}. Received: format={format!r}")
    spec = EXPORT_FORMATS[format]
    given = {name: value for name, value in options.items() if value is not None and value is not False}
    for name, value in given.items():
        option = EXPORT_OPTIONS[name]
        if option.value is not None and value != option.value:
            raise ValueError(f"`{name}` must be None or {option.value!r}. Received: {name}={value!r}")
        if name not in spec.options:
            takes = " or ".join(_spell_format(f, cli) for f, s in EXPORT_FORMATS.items() if name in s.options)
            raise ValueError(option.unsupported.format(option=_spell(name, value, cli), formats=takes,
                                                       format=_spell_format(format, cli), label=spec.label))
    for name, value in given.items():
        needed, message = EXPORT_OPTIONS[name].needs or (None, "")
        if needed and needed not in given:
            raise ValueError(message.format(option=_spell(name, value, cli),
                                            needed=_spell(needed, EXPORT_OPTIONS[needed].value, cli, asked=True)))
    path = os.fspath(path)
    if spec.suffixes and not path.endswith(spec.suffixes):
        suffix = spec.suffixes[0]
        raise ValueError(f"{path}: {_spell_format(format, cli)} writes a *{suffix} file; name the output *{suffix}")
    return spec


def format_for_path(path):
    """The format whose suffix `path` ends with (`.tflite`: "litert"); "savedmodel", a directory,
    for any other path."""
    path = os.fspath(path)
    return next((name for name, spec in EXPORT_FORMATS.items() if spec.suffixes and path.endswith(spec.suffixes)),
                "savedmodel")


def export_model(model, path, format="savedmodel", size=None, quantize=None, representative_data=None, tta=None,
                 largest_component=False, threshold=0.5, class_names=None):
    """Exports `model` as a SavedModel, a LiteRT (`.tflite`) file or an ONNX (`.onnx`) file
    (`EXPORT_FORMATS`).

    - "savedmodel": `export_savedmodel` (uint8 or float32 images of any size; see there).
    - "litert": Keras' `model.export(format="litert")` (TensorFlow's LiteRT converter), restricted
      to LiteRT's built-in operators so the file runs on the plain LiteRT runtime (Android, iOS,
      `ai-edge-litert`) with no TensorFlow ("Flex") delegate.
    - "onnx": Keras' `model.export(format="onnx")` (tf2onnx), for ONNX Runtime.

    LiteRT and ONNX files take float32 images in [0, 1], shape (N, *size, channels), at the model's
    fixed input size (resize before calling them: the resize-any-size endpoint is SavedModel-only),
    and return float32 probabilities (N, *size, classes), or a classifier's (N, K) (`is_classifier`).
    Their input is named "images". Values
    are not range-checked inside the file, so 0-255 images must be divided by 255 first. Keras'
    outputs are matched within 1e-4 (tests/test_export_formats.py).

    3D models: ONNX as is; for LiteRT, whose built-in operators have no 3D max pooling, every
    `MaxPooling3D` is exported as the maximum of strided slices (the same numbers). Models trained
    in mixed precision are exported in float32.

    Args:
        model: a Keras model taking float images in [0, 1] (as every tlunet model does).
        path: output directory ("savedmodel") or file, which must end in ".tflite" ("litert") or
            ".onnx" ("onnx") and must not exist. Written under a temporary name in the same folder
            and renamed when complete.
        format: "savedmodel", "litert" or "onnx".
        size: (H, W) (or (D, H, W)) to export a model built with any input size (None dims) at;
            default: the model's own input size.
        quantize: None, or "int8" (LiteRT only): full-integer post-training quantisation, weights
            and activations int8, with float32 input and output so callers do not change.
            Activation ranges are calibrated on `representative_data`; check the result with
            `quantization_report` on validation images.
        representative_data: for quantize="int8", required: images like those the model will see
            (100-500 validation or training images, not random noise, which would calibrate the
            ranges wrongly): an array (N, *size, channels) or an iterable of images or batches, or
            a callable returning one; float in [0, 1] or uint8 (0-255, divided by 255).
        tta: None, or "flip" (SavedModel only): `serve` averages each image's and its mirror's
            probabilities (`export_savedmodel`).
        largest_component, threshold: SavedModel only: `serve` keeps only the largest region of
            `probabilities >= threshold` (`export_savedmodel`).
        class_names: SavedModel of a classifier only: the names its `class_names()` endpoint
            returns (`export_savedmodel`); a LiteRT or ONNX file holds none.

    Returns:
        `path`.

    Raises:
        FileExistsError: `path` exists.
        ValueError: an unknown format, an option the format does not take (`check_export`), a wrong
            suffix, missing or bad representative data, a model or layer the converter cannot handle
            (the message names the file and the operators), `class_names` for a LiteRT or ONNX file,
            what `export_savedmodel` refuses (`tta` for a classifier, ...).
        ImportError: a package the format needs is missing (the message names the file and
            `pip install 'tlunet[export]'`).
    """
    spec = check_export(format, path, {"quantize": quantize, "representative_data": representative_data, "tta": tta,
                                       "largest_component": largest_component})
    if class_names is not None and format != "savedmodel":  # not an `EXPORT_OPTIONS` flag: the CLI reads config.yaml
        raise ValueError(f"class_names are stored in a SavedModel only (its class_names endpoint); a {spec.label} "
                         "file holds the probabilities in the model's class order: keep the names beside it")
    return spec.exporter(model, path, size=size, quantize=quantize, representative_data=representative_data, tta=tta,
                         largest_component=largest_component, threshold=threshold, class_names=class_names)


def _write_savedmodel(model, path, size=None, tta=None, largest_component=False, threshold=0.5, class_names=None,
                      **_):
    return export_savedmodel(model, path, size=size, tta=tta, largest_component=largest_component, threshold=threshold,
                             class_names=class_names)


def _litert_options(quantize, representative_data, shape):
    """The LiteRT converter's options: built-in operators only; for int8, full-integer quantisation
    calibrated on `representative_data`, behind float32 input and output."""
    if quantize != "int8":
        return {"target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}}
    samples = _representative_samples(representative_data, shape)
    return {
        "optimizations": [tf.lite.Optimize.DEFAULT],
        "representative_dataset": lambda: ([s] for s in samples),
        "target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]},
        "inference_input_type": tf.float32,
        "inference_output_type": tf.float32,
    }


def _write_keras_file(format, model, path, size=None, quantize=None, representative_data=None, converter=None, **_):
    """Writes `model.export(format=format)` to the file `path` (under a temporary name, renamed when
    complete) with `converter(quantize, representative_data, input shape)`'s options; returns `path`."""
    spec = EXPORT_FORMATS[format]
    path = os.fspath(path)
    if os.path.exists(path):
        raise FileExistsError(f"{path} already exists; export to a new file")
    if spec.packages:
        _require(path, f"{spec.label} export", spec.packages)
    size, channels = export_shape(model, size)
    signature = [tf.TensorSpec((None, *size, channels), tf.float32, name="images")]
    options = converter(quantize, representative_data, (*size, channels)) if converter else {}
    exportable = _export_friendly(model, litert=format == "litert")

    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = _new_temporary(parent, suffix=spec.suffixes[0])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # Keras' tf2onnx patch probes np.object
            exportable.export(tmp, format=format, input_signature=signature, verbose=False, **options)
        os.replace(tmp, path)
    except Exception as e:
        _remove(tmp)
        if format == "litert" and "ConverterError" in type(e).__name__:
            raise ValueError(_converter_message(path, model, quantize, e)) from e
        raise
    except BaseException:
        _remove(tmp)
        raise
    return path


# The formats: adding one is an entry here (and `python -m tlunet.catalog`, which gives
# `tlunet export --format` its choices).
EXPORT_FORMATS = {
    "savedmodel": ExportFormat("SavedModel", (), _write_savedmodel, frozenset({"tta", "largest_component"})),
    "litert": ExportFormat("LiteRT", (".tflite",), functools.partial(_write_keras_file, "litert",
                                                                     converter=_litert_options),
                           frozenset({"quantize", "representative_data", "validation_data"})),
    "onnx": ExportFormat("ONNX", (".onnx",), functools.partial(_write_keras_file, "onnx"),
                         packages=(("tf2onnx", "tf2onnx"), ("onnx", "onnx"))),
}
FORMATS = tuple(EXPORT_FORMATS)


def _require(path, what, modules):
    missing = [pip for module, pip in modules if importlib.util.find_spec(module) is None]
    if missing:
        raise ImportError(f"{path}: {what} needs {' and '.join(missing)} (not installed): {INSTALL_HINT}")


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def export_shape(model, size=None):
    """(spatial size, channels) a LiteRT/ONNX export of `model` takes: the model's own input size,
    or `size` where the model accepts any size (None dims). ValueError if neither is fixed."""
    shape = model.input_shape
    if isinstance(shape, list):
        raise ValueError(f"{model.name!r} has {len(shape)} inputs; LiteRT/ONNX export takes one-input models")
    spatial, channels = tuple(shape[1:-1]), shape[-1]
    if size is None:
        size = spatial
    size = tuple(None if s is None else int(s) for s in size)
    if len(size) != len(spatial):
        raise ValueError(f"`size` must have {len(spatial)} entries for {model.name!r} (input {shape}). "
                         f"Received: size={size}")
    if None in size:
        wanted = "(D, H, W)" if len(size) == 3 else "(H, W)"
        raise ValueError(f"{model.name!r} accepts any input size; pass size={wanted} "
                         f"to export it (each a multiple of its encoder's reduction). Received: size={size}")
    fixed = [(s, d) for s, d in zip(size, spatial) if d is not None and s != d]
    if fixed:
        raise ValueError(f"{model.name!r} was built for input {shape[1:]}; it cannot be exported at size={size}")
    return size, channels


def read_images(folder, size, channels=1):
    """uint8 (N, H, W, channels) images of a folder (or of its images/ sub-folder), resized
    bilinearly to `size` as training resizes them: representative data for int8 quantisation."""
    from tlunet.data import list_files, read_image, resize_pair
    from tlunet.data.io import IMAGE_SUFFIXES

    folder = os.fspath(folder)
    if os.path.isdir(os.path.join(folder, "images")):
        folder = os.path.join(folder, "images")
    names = list_files(folder, IMAGE_SUFFIXES)
    if not names:
        raise ValueError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    out = []
    for name in names:
        image = read_image(os.path.join(folder, name), channels=channels)
        out.append(resize_pair(image, np.zeros(image.shape[:2], np.uint8), tuple(size))[0])
    return np.stack(out)


def _representative_samples(data, shape):
    """float32 (1, *shape) arrays from `representative_data`, checked."""
    if callable(data):
        data = data()
    items = [data] if isinstance(data, np.ndarray) and data.ndim == len(shape) + 1 else data
    samples = []
    for item in items:
        a = np.asarray(item)
        if a.ndim == len(shape):
            a = a[None]
        if a.shape[1:] != shape:
            raise ValueError(f"representative_data: images must have shape {shape} (the exported input size). "
                             f"Received: an array of shape {a.shape}")
        if a.dtype == np.uint8:
            a = a.astype(np.float32) / 255.0
        elif not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"representative_data: images must be float in [0, 1] or uint8. Received: dtype {a.dtype}")
        a = a.astype(np.float32)
        if a.size and not (np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0):
            raise ValueError(f"representative_data: float images must be finite and in [0, 1]; found min "
                             f"{np.nanmin(a):g}, max {np.nanmax(a):g} (0-255 values: divide by 255)")
        samples.extend(a[i:i + 1] for i in range(len(a)))
    if not samples:
        raise ValueError("representative_data holds no images")
    return samples


class _SlicedMaxPooling3D(keras.layers.Layer):
    """`MaxPooling3D` with pool size == strides and "valid" padding, as the maximum of strided
    slices: LiteRT has no built-in 3D max pooling, but strided slices and maximum are built in."""

    def __init__(self, pool_size, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = tuple(pool_size)

    def call(self, x):
        pd, ph, pw = self.pool_size
        d, h, w = (x.shape[i] // p * p for i, p in zip((1, 2, 3), self.pool_size))
        out = None
        for i in range(pd):
            for j in range(ph):
                for k in range(pw):
                    part = x[:, i:d:pd, j:h:ph, k:w:pw, :]
                    out = part if out is None else keras.ops.maximum(out, part)
        return out

    def compute_output_shape(self, input_shape):
        n, *spatial, c = input_shape
        return (n, *(s // p for s, p in zip(spatial, self.pool_size)), c)


def _export_friendly(model, litert):
    """`model`, or a clone that shares its layers (and so its weights) but computes in float32 and,
    for LiteRT, replaces `MaxPooling3D` by `_SlicedMaxPooling3D`."""
    layers = list(_all_layers(model))
    pools = litert and any(isinstance(layer, keras.layers.MaxPooling3D) for layer in layers)
    mixed = any(_compute_dtype(layer) not in (None, "float32") for layer in layers)
    if not (pools or mixed):
        return model
    rebuilt = []

    def clone(layer):
        if litert and isinstance(layer, keras.layers.MaxPooling3D):
            if tuple(layer.strides) != tuple(layer.pool_size) or layer.padding != "valid":
                raise ValueError(f"{layer.name}: LiteRT has no 3D max pooling; tlunet exports it as strided "
                                 f"slices only for strides == pool_size and padding 'valid'")
            return _SlicedMaxPooling3D(layer.pool_size, name=layer.name, dtype="float32")
        if _compute_dtype(layer) not in (None, "float32"):
            new = layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})
            rebuilt.append((layer, new))
            return new
        return layer

    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    for old, new in rebuilt:
        new.set_weights(old.get_weights())
    return copy


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def _compute_dtype(layer):
    if isinstance(layer, (keras.Model, keras.layers.InputLayer)):
        return None
    return getattr(layer, "compute_dtype", None)


def _converter_message(path, model, quantize, error):
    lines = str(error).splitlines()
    ops = [line.strip() for line in lines if "ops:" in line.lower() or "not supported" in line.lower()]
    detail = "; ".join(dict.fromkeys(ops)) or (lines[-1] if lines else type(error).__name__)
    what = "int8 LiteRT" if quantize else "LiteRT"
    return f"{path}: the {what} converter cannot convert {model.name!r} with built-in operators only: {detail[:600]}"


def load_litert(path, num_threads=None):
    """A callable running a `.tflite` file: float32 images (N, *size, C) in [0, 1] -> float32
    probabilities (N, *size, classes), one image per invocation. Uses the LiteRT runtime
    (`ai-edge-litert`), else TensorFlow's `tf.lite.Interpreter`.

    Args:
        path: the `.tflite` file.
        num_threads: CPU threads for the interpreter (None: LiteRT's default).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: LiteRT file not found")
    interpreter = _interpreter(path, num_threads)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()

    def predict(images):
        images = np.asarray(images, np.float32)
        if images.shape[1:] != tuple(inp["shape"][1:]):
            raise ValueError(f"{path} takes images of shape (N, {', '.join(map(str, inp['shape'][1:]))}). "
                             f"Received: {images.shape}")
        results = []
        for image in images:
            interpreter.set_tensor(inp["index"], image[None])
            interpreter.invoke()
            results.append(interpreter.get_tensor(out["index"])[0].copy())
        return np.stack(results) if results else np.zeros((0, *out["shape"][1:]), np.float32)

    predict.input_shape = tuple(inp["shape"][1:])
    return predict


def _interpreter(path, num_threads):
    if importlib.util.find_spec("ai_edge_litert") is not None:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter(model_path=path, num_threads=num_threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "tf.lite.Interpreter is deprecated": it is the fallback
        return tf.lite.Interpreter(model_path=path, num_threads=num_threads)


@dataclasses.dataclass
class QuantizationReport:
    """Dice of the Keras model and of an exported LiteRT file on the same validation images.

    Attributes:
        images: number of validation images.
        dice_float: mean Dice of the Keras (float32) model against the masks.
        dice_int8: mean Dice of the LiteRT file (int8 or not) against the masks.
        agreement: mean Dice between the two models' predicted masks.
        max_prob_diff: largest absolute difference between their probabilities.
    """
    images: int
    dice_float: float
    dice_int8: float
    agreement: float
    max_prob_diff: float

    @property
    def dice_change(self):
        """dice_int8 - dice_float."""
        return self.dice_int8 - self.dice_float

    def __str__(self):
        return (f"Dice on {self.images} images: Keras float32 {self.dice_float:.4f}, LiteRT "
                f"{self.dice_int8:.4f} (change {self.dice_change:+.4f}); masks agree at Dice "
                f"{self.agreement:.4f}, probabilities within {self.max_prob_diff:.3f}")


def quantization_report(model, tflite_path, images, masks, threshold=0.5, num_threads=None, batch_size=8):
    """Measures what a LiteRT export (typically int8) costs against the Keras model.

    Args:
        model: the Keras model the file was exported from.
        tflite_path: the `.tflite` file.
        images: (N, *size, C) validation images at the exported size, uint8 (0-255) or float in [0, 1].
        masks: (N, *size) or (N, *size, 1) label maps (0/1, or class indices).
        threshold: foreground threshold for one-channel (sigmoid) models; softmax models take the argmax.

    Returns:
        `QuantizationReport`. Dice per image is the mean over the foreground classes present in the
        mask or either prediction (as `tlunet evaluate` computes it), then averaged over images.
    """
    from tlunet.evaluation import dice

    images = np.asarray(images)
    x = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)
    if x.size and not (np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0):
        raise ValueError("quantization_report: float images must be in [0, 1] (0-255 values: pass uint8)")
    masks = np.asarray(masks)
    if masks.ndim == x.ndim:
        masks = masks[..., 0]
    if masks.shape != x.shape[:-1]:
        raise ValueError(f"quantization_report: masks {masks.shape} do not match images {x.shape}")
    run = load_litert(tflite_path, num_threads=num_threads)
    p_float = np.concatenate([np.asarray(model(x[i:i + batch_size], training=False), np.float32)
                              for i in range(0, len(x), batch_size)])
    p_lite = run(x)
    classes = max(2, p_float.shape[-1])

    def mean_dice(preds, trues):
        scores = []
        for pred, true in zip(preds, trues):
            present = [c for c in range(1, classes) if (true == c).any() or (pred == c).any()] or [1]
            scores.append(np.mean([dice(pred == c, true == c) for c in present]))
        return float(np.mean(scores))

    post = PostProcess(threshold=threshold)
    l_float, l_lite = post.labels(p_float), post.labels(p_lite)
    return QuantizationReport(images=len(x), dice_float=mean_dice(l_float, masks), dice_int8=mean_dice(l_lite, masks),
                              agreement=mean_dice(l_lite, l_float), max_prob_diff=float(np.abs(p_float - p_lite).max()))
