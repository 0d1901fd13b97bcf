"""Keeps TensorFlow's start-up noise out of the `tlunet` command's terminal.

TensorFlow prints CUDA/cuInit probes and oneDNN notices straight to file descriptor 2 while it loads
and looks for devices, before any Python logging setting can apply. When tlunet runs as its console
script (without -v/--verbose), or with TLUNET_QUIET=1, that descriptor points at /dev/null for just
that moment, and TensorFlow's own log level is set to errors-only afterwards (retracing warnings
included). Imported first by `tlunet/__init__.py`, because importing the package imports TensorFlow.
"""

import os
import sys


def _wanted():
    if os.environ.get("TLUNET_QUIET") in ("0", "1"):
        return os.environ["TLUNET_QUIET"] == "1"
    console = os.path.basename(sys.argv[0] if sys.argv else "") in ("tlunet", "tlunet.exe")
    return console and not {"-v", "--verbose"} & set(sys.argv[1:])


def quiet_tensorflow():
    """Imports TensorFlow with its C++ start-up lines silenced (no-op if it is already imported)."""
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # errors-only for TensorFlow's C++ logging from here on
    if "tensorflow" in sys.modules:
        _python_logs_errors_only()
        return
    try:
        sys.stderr.flush()
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except OSError:  # no usable descriptor 2 (e.g. some notebook kernels): nothing to hide
        return
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf
        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    _python_logs_errors_only()


def _python_logs_errors_only():
    import absl.logging
    import tensorflow as tf
    tf.get_logger().setLevel("ERROR")  # retracing warnings and the like
    absl.logging.set_verbosity(absl.logging.ERROR)


if _wanted():
    quiet_tensorflow()
