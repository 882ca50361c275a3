import csv
import gzip
import hashlib
import http.server
import json
import subprocess
import sys
import threading

import io

import pytest

from stages import fetch as fetch_stage
from stages.common import RAW_COLUMNS, UserError
from tests.conftest import REPO, make_tracks, write_tracks_csv


def run_fetch(source, tmp_path, sha=None, content=None):
    out, metrics = tmp_path / "out" / "tracks.csv", tmp_path / "out" / "fetch.json"
    report = fetch_stage.fetch(str(source), out, metrics, sha256_pin=sha, content_sha256_pin=content,
                               retries=2, backoff=0, timeout=5)
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
    assert saved["content_sha256_pinned"] is False
    assert saved["content_sha256"] == fetch_stage.content_sha256(tracks_frame_of(tracks_csv))


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


def test_the_default_params_pin_the_published_content(monkeypatch):
    from stages.params import load_section

    monkeypatch.chdir(REPO)
    pinned = load_section("fetch")
    # content hash of the published table (docs/data.md); the bytes are not pinned, so a
    # re-saved copy with the same rows (CRLF, BOM, quoting, float spelling) is accepted
    assert pinned.content_sha256 == \
        "578064a97fee5ea88d4425a881b9aaead060870907ed26292a7655027b83cea1"
    assert pinned.sha256 is None


def test_every_source_must_match_the_pinned_hash(tmp_path, tracks, http_root):
    """The env override, a path, a file:// URL and http all go through the same check."""
    root, base = http_root
    gz = write_tracks_csv(tracks, root / "dataset.csv.gz")
    good = hashlib.sha256(gzip.decompress(gz.read_bytes())).hexdigest()
    content = fetch_stage.content_sha256(tracks_frame_of(gz))
    for i, source in enumerate([str(gz), gz.as_uri(), f"{base}/dataset.csv.gz"]):
        run_fetch(source, tmp_path / f"ok{i}", sha=good, content=content)
        with pytest.raises(UserError, match=f"expected {'1' * 64} \\(fetch.sha256\\), got {good}"):
            run_fetch(source, tmp_path / f"bad{i}", sha="1" * 64)
        with pytest.raises(UserError, match=f"content sha256 is {content}, expected {'1' * 64} "
                           "\\(fetch.content_sha256\\)"):
            run_fetch(source, tmp_path / f"bad-content{i}", content="1" * 64)


def tracks_frame_of(path):
    """The parsed table of a CSV file (gzip or not), as fetch parses it."""
    return fetch_stage.parse_tracks(fetch_stage.decode(path.read_bytes(), str(path)), str(path))


def _as_published(frame):
    body = frame.drop(columns=["Unnamed: 0"])
    body.index = frame["Unnamed: 0"].to_numpy()
    return body


def _respell_floats(csv_bytes: bytes) -> bytes:
    """Every float another way: 0.5 -> 5.0e-1, 1e-06 -> 1.0e-6 (same float64 values)."""
    rows = list(csv.reader(io.StringIO(csv_bytes.decode())))
    floats = {i for i, name in enumerate(rows[0]) if name in FLOAT_COLUMNS}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(rows[0])
    for row in rows[1:]:
        writer.writerow([f"{float(v):.16e}" if i in floats and v else v
                         for i, v in enumerate(row)])
    return out.getvalue().encode()


FLOAT_COLUMNS = ("danceability", "energy", "loudness", "speechiness", "acousticness",
                 "instrumentalness", "liveness", "valence", "tempo")

SAME_CONTENT = {  # what a spreadsheet or another CSV writer does to the same rows
    "CRLF line ends": lambda csv_bytes: csv_bytes.replace(b"\n", b"\r\n"),
    "a UTF-8 BOM": lambda csv_bytes: b"\xef\xbb\xbf" + csv_bytes,
    "every field quoted": lambda csv_bytes: _as_published(make_tracks()).to_csv(
        quoting=csv.QUOTE_ALL).encode(),
    "floats spelled 1.0e-6": _respell_floats,
    "booleans spelled FALSE/TRUE": lambda csv_bytes: csv_bytes.replace(b",False,", b",FALSE,")
    .replace(b",True,", b",TRUE,"),
    "all of them": lambda csv_bytes: b"\xef\xbb\xbf" + _respell_floats(csv_bytes).replace(
        b",False,", b",FALSE,").replace(b"\n", b"\r\n"),
}


@pytest.mark.parametrize("kind", SAME_CONTENT)
def test_the_same_rows_spelled_otherwise_pass_the_content_pin(tmp_path, tracks_csv, kind):
    original = tracks_csv.read_bytes()
    pinned = fetch_stage.content_sha256(tracks_frame_of(tracks_csv))
    respelled = SAME_CONTENT[kind](original)
    assert respelled != original  # the bytes differ, so a byte pin would refuse it
    copy = tmp_path / "respelled.csv"
    copy.write_bytes(respelled)
    out, _, report = run_fetch(copy, tmp_path, content=pinned)
    assert report["content_sha256"] == pinned and report["content_sha256_pinned"] is True
    assert report["sha256"] == hashlib.sha256(respelled).hexdigest() != \
        hashlib.sha256(original).hexdigest()
    assert out.read_bytes() == respelled  # the file as published, not rewritten


def _changed_value(frame):
    frame.loc[10, "tempo"] = frame.loc[10, "tempo"] + 0.001
    return frame


def _changed_label(frame):
    frame.loc[10, "track_genre"] = "blues" if frame.loc[10, "track_genre"] != "blues" else "chill"
    return frame


OTHER_CONTENT = {
    "one changed value": _changed_value,
    "one dropped row": lambda frame: frame.drop(index=10),
    "one changed label": _changed_label,
}


@pytest.mark.parametrize("kind", OTHER_CONTENT)
def test_other_content_fails_the_pin_naming_both_hashes(tmp_path, tracks_csv, kind):
    pinned = fetch_stage.content_sha256(tracks_frame_of(tracks_csv))
    changed = write_tracks_csv(OTHER_CONTENT[kind](make_tracks()), tmp_path / "changed.csv")
    actual = fetch_stage.content_sha256(tracks_frame_of(changed))
    assert actual != pinned
    with pytest.raises(UserError) as excinfo:
        run_fetch(changed, tmp_path, content=pinned)
    byte_digest = hashlib.sha256(changed.read_bytes()).hexdigest()
    # one line: both content hashes, the param, how to accept the file, the byte hash too
    assert str(excinfo.value) == (
        f"{changed}: content mismatch: the table's content sha256 is {actual}, expected "
        f"{pinned} (fetch.content_sha256); the file's bytes have sha256 {byte_digest}; "
        f"to use this file on purpose: dvc exp run -S fetch.content_sha256={actual}")
    assert not (tmp_path / "out").exists()


def test_the_canonical_form_is_one_line_per_row_in_schema_order(tracks_csv, tracks):
    frame = tracks_frame_of(tracks_csv)
    text = fetch_stage.canonical_table(frame[list(reversed(frame.columns))]).decode()
    lines = text.split("\n")
    assert lines[0] == ",".join(RAW_COLUMNS) and lines[-1] == ""
    assert len(lines) == len(tracks) + 2 and "\r" not in text
    first = dict(zip(RAW_COLUMNS, next(csv.reader([lines[1]]))))
    assert first["Unnamed: 0"] == "0.0" and first["explicit"] in ("True", "False")
    assert first["tempo"] == repr(float(tracks.loc[0, "tempo"]))
    na_line = next(csv.reader([lines[len(tracks)]]))  # make_tracks' last row lacks artists
    assert na_line[RAW_COLUMNS.index("artists")] == ""


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
