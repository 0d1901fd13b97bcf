"""Fetching public data sets from their publishers, verified against the checksums they publish.

HC18 comes from its Zenodo record (doi:10.5281/zenodo.1327317, CC BY 4.0). The record's metadata
(`/api/records/1327317`) lists each file with its size and MD5; every downloaded file is checked
against both before it is unpacked, and the folder is only marked complete once the official layout
reads back. Used by `root: download` in configs, `tlunet experiment ... --data download` and the
`hc18` TFDS builder.
"""

import hashlib
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile

from tlunet.data.hc18 import CSV_NAME, find_hc18
from tlunet.data.io import DataError

HC18_RECORD_URL = "https://zenodo.org/api/records/1327317"
HC18_FILES = ("training_set.zip", CSV_NAME)
_COMPLETE = ".complete"


def data_home():
    """Where downloaded data sets live: $TLUNET_DATA, else ~/.tlunet/data."""
    return os.path.expanduser(os.environ.get("TLUNET_DATA", os.path.join("~", ".tlunet", "data")))


def _get(url, timeout):
    try:
        return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - https/http URLs of a data record
    except (urllib.error.URLError, OSError) as e:
        raise DataError(f"could not reach {url} ({e})") from e


def _record_files(record_url, timeout):
    """{file name: (download URL, size, md5)} from a Zenodo record's JSON metadata."""
    with _get(record_url, timeout) as response:
        try:
            record = json.load(response)
        except ValueError as e:
            raise DataError(f"{record_url}: not a Zenodo record (no JSON metadata)") from e
    entries = record.get("files", [])
    entries = entries.get("entries", []) if isinstance(entries, dict) else entries
    if isinstance(entries, dict):
        entries = list(entries.values())
    files = {}
    for e in entries:
        name = e.get("key") or e.get("filename")
        algo, _, digest = str(e.get("checksum", "")).partition(":")
        links = e.get("links", {})
        url = links.get("content") or links.get("self") or links.get("download")
        if name and url and algo == "md5" and digest:
            files[name] = (url, int(e.get("size", -1)), digest)
    return files


def _download(url, size, md5, dest, timeout):
    """Streams `url` to `dest`, checking size and MD5 before the file takes its name."""
    tmp = dest + ".part"
    digest, got = hashlib.md5(), 0
    with _get(url, timeout) as response, open(tmp, "wb") as out:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
            got += len(chunk)
    if (size >= 0 and got != size) or digest.hexdigest() != md5:
        os.remove(tmp)
        raise DataError(f"{url}: the download does not match the record's checksum (got {got} bytes, md5 "
                        f"{digest.hexdigest()}; expected {size} bytes, md5 {md5}); try again")
    os.replace(tmp, dest)


def download_hc18(dest=None, record_url=None, timeout=60, log=print):
    """Downloads and unpacks the HC18 training set into `dest` (official layout), once.

    Args:
        dest: target folder; default `data_home()/hc18`. A folder already completed is reused.
        record_url: the Zenodo record API URL (default: HC18's record; tests point it at a local server).
        timeout: seconds per network request.
        log: progress messages.

    Returns:
        `dest`, holding `training_set/NNN_HC.png`, `..._Annotation.png` and the CSV.

    Raises:
        DataError: no network, a file missing from the record, a checksum mismatch, or an archive
            that does not unpack to the HC18 layout; the message says how to get the files by hand.
    """
    dest = os.path.abspath(os.path.expanduser(dest or os.path.join(data_home(), "hc18")))
    record_url = record_url or os.environ.get("TLUNET_HC18_RECORD_URL", HC18_RECORD_URL)
    if os.path.isfile(os.path.join(dest, _COMPLETE)):
        return dest
    by_hand = (f"Or download {' and '.join(HC18_FILES)} from https://zenodo.org/record/1327317 "
               f"yourself, unzip into one folder and pass that folder (--data FOLDER).")
    try:
        files = _record_files(record_url, timeout)
        missing = [name for name in HC18_FILES if name not in files]
        if missing:
            raise DataError(f"{record_url}: the record lists no {missing} with an MD5 checksum")
        os.makedirs(dest, exist_ok=True)
        work = tempfile.mkdtemp(prefix=".download-", dir=dest)
        try:
            for name in HC18_FILES:
                url, size, md5 = files[name]
                log(f"downloading {name}{f' ({size / 1e6:.1f} MB)' if size >= 0 else ''} from {url}")
                _download(url, size, md5, os.path.join(work, name), timeout)
            with zipfile.ZipFile(os.path.join(work, "training_set.zip")) as archive:
                for member in archive.namelist():
                    if os.path.isabs(member) or ".." in member.replace("\\", "/").split("/"):
                        raise DataError(f"training_set.zip: refusing the member {member!r} (outside the folder)")
                archive.extractall(os.path.join(work, "unpacked"))
            folder = _images_folder(os.path.join(work, "unpacked"))
            shutil.rmtree(os.path.join(dest, "training_set"), ignore_errors=True)
            shutil.move(folder, os.path.join(dest, "training_set"))
            shutil.move(os.path.join(work, CSV_NAME), os.path.join(dest, CSV_NAME))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        n = len(find_hc18(dest))
    except DataError as e:
        raise DataError(f"HC18 download failed: {e}. {by_hand}") from e
    with open(os.path.join(dest, _COMPLETE), "w") as f:
        f.write(f"{record_url}\n{n} images\n")
    log(f"HC18: {n} images in {dest}")
    return dest


def _images_folder(root):
    """The unpacked folder holding the most NNN_HC.png images (macOS `__MACOSX/._*` copies ignored)."""
    counts = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__MACOSX"]
        counts[folder] = sum(n.endswith("_HC.png") and not n.startswith("._") for n in names)
    best = max(counts, key=counts.get, default=None)
    if not best or not counts[best]:
        raise DataError("training_set.zip holds no NNN_HC.png images")
    return best
