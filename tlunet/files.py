"""Crash-safe file writing: a file is replaced by a complete new version or left as it was."""

import contextlib
import errno
import json
import os
import shutil

# Name endings kept at the end of the temporary name, so a writer that picks its format from the
# name (Keras, NumPy) writes the right one.
_SUFFIXES = (".weights.h5", ".keras", ".json", ".csv", ".npz")


def fsync_path(path):
    """Flushes the file or folder at `path` to disk (`os.fsync`)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def free_bytes(folder):
    """The free space, in bytes, of the disk holding `folder`."""
    return shutil.disk_usage(folder).free


def dump_json(obj, path):
    """Writes `obj` as JSON to `path` (a writer for `atomic_write`)."""
    with open(path, "w") as f:
        json.dump(obj, f)


def _partial_path(path):
    """The temporary name `atomic_write` writes `path` under: hidden, beside it, same ending."""
    folder = os.path.dirname(os.path.abspath(path))
    base, ext = os.path.basename(path), ""
    for suffix in _SUFFIXES:
        if base.endswith(suffix):
            base, ext = base[:-len(suffix)], suffix
            break
    return os.path.join(folder, f".{base}.partial{ext}")


def atomic_write(path, write, needed=0):
    """Writes `path` through `write(tmp_path)` into a temporary name beside it, fsyncs, and renames it
    into place, so `path` is always either the old file or the complete new one — never half of one.
    The file gets the permissions `open` gives a new file (the umask's), whatever the old one had.

    Args:
        needed: bytes the file will take about; a disk with less free space gives an `OSError`
            naming the folder before anything is written (HDF5 can crash the process on a full disk).

    Returns:
        `path`.

    Raises:
        OSError: naming `path`, when the disk is full or the folder is not writable.
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = _partial_path(path)
    free = free_bytes(folder)
    if needed and free < 1.5 * needed:
        raise OSError(errno.ENOSPC, f"{folder}: not enough free disk space to write {os.path.basename(path)} "
                      f"({free / 2**20:.1f} MiB free, about {1.5 * needed / 2**20:.1f} MiB needed)")
    try:
        # A leftover of a killed write would keep its old mode through `write` (open and h5py
        # truncate, keeping permissions): a new file gets what `open` gives under the umask.
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise OSError(e.errno, f"{path}: could not be written ({e.strerror or e})") from e
    with contextlib.suppress(OSError):  # the rename itself survives a power cut
        fsync_path(folder)
    return path


__all__ = ["atomic_write", "dump_json", "free_bytes", "fsync_path"]
