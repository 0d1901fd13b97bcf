"""HC18 fetching itself: the Zenodo download path and the TFDS builder, against a local HTTP server
on 127.0.0.1 that serves a Zenodo-style record of a zip made from the bundled sample."""

import hashlib
import http.server
import io
import json
import os
import threading
import zipfile
from pathlib import Path

import pytest
import tensorflow_datasets as tfds

import tlunet
from tlunet.data import DataError
from tlunet.data.download import download_hc18
from tlunet.data.hc18 import CSV_NAME, find_hc18

SAMPLE = Path(tlunet.sample_path("hc18_small"))
KEEP = ("044_HC", "082_HC", "082_2HC", "106_HC")


def _files(corrupt=False):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("__MACOSX/training_set/._044_HC.png", b"resource fork")  # as zips made on a Mac carry
        z.writestr("__MACOSX/training_set/._082_HC.png", b"resource fork")
        for stem in KEEP:
            for suffix in (".png", "_Annotation.png"):
                z.write(SAMPLE / "training_set" / f"{stem}{suffix}", f"training_set/{stem}{suffix}")
    lines = (SAMPLE / CSV_NAME).read_text().splitlines()
    csv_text = "\n".join([lines[0]] + [ln for ln in lines[1:] if ln.split(",")[0][:-4] in KEEP]) + "\n"
    files = {"training_set.zip": buf.getvalue(), CSV_NAME: csv_text.encode()}
    sums = {k: hashlib.md5(v).hexdigest() for k, v in files.items()}
    if corrupt:
        files["training_set.zip"] = files["training_set.zip"][:-10] + b"0123456789"
    return files, sums


@pytest.fixture
def zenodo(request):
    """A local stand-in for zenodo.org: /api/records/1 (metadata with MD5s) and the files."""
    files, sums = _files(corrupt=getattr(request, "param", False))
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            hits.append(self.path)
            base = f"http://127.0.0.1:{self.server.server_port}"
            if self.path == "/api/records/1":
                body = json.dumps({"files": [{"key": k, "size": len(_files()[0][k]), "checksum": f"md5:{sums[k]}",
                                              "links": {"self": f"{base}/files/{k}"}} for k in files]}).encode()
            elif self.path.startswith("/files/") and self.path[7:] in files:
                body = files[self.path[7:]]
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/api/records/1", hits
    server.shutdown()
    server.server_close()


def test_download_checks_md5_unpacks_the_official_layout_and_is_reused(zenodo, tmp_path):
    url, hits = zenodo
    root = download_hc18(tmp_path / "hc18", record_url=url, log=lambda *a: None)
    records = find_hc18(root)
    assert sorted(os.path.basename(r.image)[:-4] for r in records) == sorted(KEEP)
    assert (Path(root) / "training_set" / "082_2HC_Annotation.png").is_file()
    served = len(hits)
    assert download_hc18(tmp_path / "hc18", record_url=url) == root  # complete: not fetched again
    assert len(hits) == served


@pytest.mark.parametrize("zenodo", [True], indirect=True)
def test_a_corrupt_download_is_refused_and_leaves_nothing(zenodo, tmp_path):
    url, _ = zenodo
    with pytest.raises(DataError, match=r"does not match the record's checksum.*zenodo.org/record/1327317"):
        download_hc18(tmp_path / "hc18", record_url=url, log=lambda *a: None)
    assert not (tmp_path / "hc18" / "training_set").exists()
    assert not (tmp_path / "hc18" / ".complete").exists()


def test_no_network_says_how_to_get_the_files(tmp_path):
    with pytest.raises(DataError, match=r"could not reach .*--data FOLDER"):
        download_hc18(tmp_path / "hc18", record_url="http://127.0.0.1:9/api/records/1", timeout=5)


def test_tfds_load_hc18_after_import_tlunet_downloads_itself(zenodo, tmp_path, monkeypatch):
    url, _ = zenodo
    monkeypatch.setenv("TLUNET_HC18_RECORD_URL", url)
    assert "hc18" in tfds.list_builders()
    ds = tfds.load("hc18", split="train", data_dir=str(tmp_path / "tfds"))
    examples = list(ds.as_numpy_iterator())
    assert sorted(e["filename"].decode() for e in examples) == sorted(f"{s}.png" for s in KEEP)
    first = examples[0]
    assert first["image"].shape == first["mask"].shape and first["mask"].max() == 1
    assert {e["subject"].decode() for e in examples} == {"044", "082", "106"}


def test_experiment_data_download_uses_the_same_path(zenodo, tmp_path, monkeypatch):
    from tlunet.runners import config_from_dict
    from tlunet.runners.image import load_images
    url, _ = zenodo
    monkeypatch.setenv("TLUNET_HC18_RECORD_URL", url)
    monkeypatch.setenv("TLUNET_DATA", str(tmp_path / "home"))
    cfg = config_from_dict({"name": "x", "data": {"kind": "hc18", "root": "download", "image_size": [32, 64]},
                            "runs": [{"name": "scratch", "strategy": "scratch"}]}, str(tmp_path / "x.yaml"))
    images, masks, meta, groups, _ = load_images(cfg, cfg.data)
    assert images.shape == (4, 32, 64, 1) and sorted(set(groups)) == ["044", "082", "106"]
    assert (tmp_path / "home" / "hc18" / ".complete").is_file()
