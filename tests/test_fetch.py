import gzip
import hashlib
import http.server
import json
import subprocess
import sys
import threading

import pytest

from stages import fetch as fetch_stage
from stages.common import UserError
from tests.conftest import REPO, make_tracks, write_tracks_csv


def run_fetch(source, tmp_path, sha=None):
    out, metrics = tmp_path / "out" / "tracks.csv", tmp_path / "out" / "fetch.json"
    report = fetch_stage.fetch(str(source), sha, out, metrics, retries=2, backoff=0, timeout=5)
    return out, metrics, report


def test_plain_csv_is_copied_byte_for_byte_with_metrics(tmp_path, tracks_csv, tracks):
    out, metrics, report = run_fetch(tracks_csv, tmp_path)
    assert out.read_bytes() == tracks_csv.read_bytes()
    saved = json.loads(metrics.read_text())
    assert saved["rows"] == len(tracks)
    assert saved["sha256"] == hashlib.sha256(tracks_csv.read_bytes()).hexdigest()
    assert saved["bytes"] == tracks_csv.stat().st_size
    # a local copy is recorded by its base name: no path of this machine in a committed file
    assert saved["source"] == "tracks.csv" and saved["sha256_pinned"] is False


def test_provenance_names_carry_no_local_path_or_credentials():
    name = fetch_stage.provenance_name
    assert name("https://user:secret@example.org:8443/d/dataset.csv?token=abc#x") == \
        "https://example.org:8443/d/dataset.csv"
    assert name("/home/someone/Downloads/dataset.csv.gz") == "dataset.csv.gz"
    assert name("file:///srv/data/spotify_tracks.csv") == "spotify_tracks.csv"


def test_gzip_and_file_url_are_decompressed(tmp_path, tracks):
    gz = write_tracks_csv(tracks, tmp_path / "tracks.csv.gz")
    out, _, _ = run_fetch(gz.as_uri(), tmp_path)
    assert out.read_bytes() == gzip.decompress(gz.read_bytes())


def test_env_var_overrides_param():
    assert fetch_stage.resolve_source("https://x/y.csv", {"SPOTIFY_TRACKS_URL": "/a.csv"}) == "/a.csv"
    assert fetch_stage.resolve_source("https://x/y.csv", {}) == "https://x/y.csv"


def test_sha256_param_is_checked(tmp_path, tracks_csv):
    good = hashlib.sha256(tracks_csv.read_bytes()).hexdigest()
    _, report_file, _ = run_fetch(tracks_csv, tmp_path, sha=good.upper())
    assert json.loads(report_file.read_text())["sha256_pinned"] is True
    with pytest.raises(UserError) as excinfo:
        run_fetch(tracks_csv, tmp_path / "b", sha="0" * 64)
    # one line naming both hashes, and how to accept the file on purpose
    assert str(excinfo.value) == (
        f"{tracks_csv}: sha256 mismatch: expected {'0' * 64} (fetch.sha256), got {good}; "
        f"to use this file on purpose: dvc exp run -S fetch.sha256={good}")
    assert not (tmp_path / "b" / "out").exists()


def test_the_default_params_pin_the_published_file(monkeypatch):
    from stages.params import load_section

    monkeypatch.chdir(REPO)
    pinned = load_section("fetch").sha256
    # SHA-256 of the decompressed published CSV (see README, "The data")
    assert pinned == "b202fa49909b2d5cef71a04b1d21243cfeb36414535f2ca9272aa646721177bd"


def test_every_source_must_match_the_pinned_hash(tmp_path, tracks, http_root):
    """The env override, a path, a file:// URL and http all go through the same check."""
    root, base = http_root
    gz = write_tracks_csv(tracks, root / "dataset.csv.gz")
    good = hashlib.sha256(gzip.decompress(gz.read_bytes())).hexdigest()
    for i, source in enumerate([str(gz), gz.as_uri(), f"{base}/dataset.csv.gz"]):
        run_fetch(source, tmp_path / f"ok{i}", sha=good)
        with pytest.raises(UserError, match=f"expected {'1' * 64} \\(fetch.sha256\\), got {good}"):
            run_fetch(source, tmp_path / f"bad{i}", sha="1" * 64)


@pytest.fixture
def http_root(tmp_path):
    """Serve tmp_path/www on 127.0.0.1 for the download path."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_http_download(tmp_path, tracks, http_root):
    root, base = http_root
    write_tracks_csv(tracks, root / "dataset.csv.gz")
    out, _, report = run_fetch(f"{base}/dataset.csv.gz", tmp_path)
    assert report["rows"] == len(tracks)
    assert out.read_bytes().startswith(b",track_id,artists")


def test_http_404_is_one_clear_error(tmp_path, http_root):
    _, base = http_root
    with pytest.raises(UserError, match=r"download failed after 1 attempt\(s\): HTTP 404"):
        run_fetch(f"{base}/missing.csv", tmp_path)


def _gzip_truncated(csv: bytes) -> bytes:
    data = gzip.compress(csv)
    return data[: len(data) // 2]


def _gzip_corrupt(csv: bytes) -> bytes:
    data = bytearray(gzip.compress(csv))
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)  # bit rot inside the deflate stream
    return bytes(data)


def _drop_column(csv: bytes) -> bytes:
    frame = make_tracks().drop(columns=["energy"])
    return (frame.drop(columns=["Unnamed: 0"]).set_axis(frame["Unnamed: 0"]).to_csv()).encode()


def _non_numeric(csv: bytes) -> bytes:
    frame = make_tracks()
    frame["tempo"] = frame["tempo"].astype(object)
    frame.loc[3, "tempo"] = "fast"
    return frame.drop(columns=["Unnamed: 0"]).set_axis(frame["Unnamed: 0"]).to_csv().encode()


BAD_INPUTS = {
    "html page": (lambda csv: b"<!DOCTYPE html><html><body>Sign in</body></html>",
                  "is an HTML/XML page, not a CSV"),
    "git-lfs pointer": (lambda csv: b"version https://git-lfs.github.com/spec/v1\n"
                        b"oid sha256:abc\nsize 20118244\n", "is a Git LFS pointer file"),
    "truncated gzip": (_gzip_truncated, "gzip data is truncated"),
    "corrupt gzip": (_gzip_corrupt, "gzip data is corrupt"),
    "empty file": (lambda csv: b"", "file is empty"),
    "header only": (lambda csv: csv.splitlines(keepends=True)[0], "has a header but no data rows"),
    "missing column": (_drop_column, "missing column(s) energy"),
    "non-numeric cell": (_non_numeric, "column 'tempo', line 5: 'fast' is not a number"),
}


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, tracks_csv, kind):
    make_bad, message = BAD_INPUTS[kind]
    bad = tmp_path / "bad.csv"
    bad.write_bytes(make_bad(tracks_csv.read_bytes()))
    with pytest.raises(UserError) as excinfo:
        run_fetch(bad, tmp_path)
    assert message in str(excinfo.value)
    assert str(bad) in str(excinfo.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_bad_input_leaves_an_earlier_output_untouched(tmp_path, tracks_csv):
    out, metrics, _ = run_fetch(tracks_csv, tmp_path)
    before = (out.read_bytes(), metrics.read_bytes())
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"<html></html>")
    with pytest.raises(UserError):
        run_fetch(bad, tmp_path)
    assert (out.read_bytes(), metrics.read_bytes()) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["fetch.json", "tracks.csv"]


def test_unreachable_host_and_missing_file(tmp_path):
    with pytest.raises(UserError, match=r"http://127\.0\.0\.1:9/x\.csv: download failed after 2"):
        run_fetch("http://127.0.0.1:9/x.csv", tmp_path)
    with pytest.raises(UserError, match="no such file"):
        run_fetch(tmp_path / "nope.csv", tmp_path)


def test_cli_prints_one_line_and_exits_nonzero(in_tmp_repo):
    (in_tmp_repo / "bad.csv").write_bytes(b"")
    result = subprocess.run(
        [sys.executable, "-m", "stages.fetch"], cwd=in_tmp_repo, capture_output=True, text=True,
        env={"SPOTIFY_TRACKS_URL": "bad.csv", "PYTHONPATH": str(REPO), "PATH": ""},
    )
    assert result.returncode == 2
    assert result.stderr == "error: bad.csv: file is empty\n"
    assert not (in_tmp_repo / "data").exists()
