"""Stage fetch: download (or copy) the Spotify Tracks CSV, validate it, write data/raw/tracks.csv.

The source is param ``fetch.url``; the environment variable SPOTIFY_TRACKS_URL
overrides it (a local copy, say). Either may be an http(s) URL, a file:// URL or a
plain path, to a plain or gzip-compressed CSV. Whatever the source, the decompressed
bytes must have the sha256 in param ``fetch.sha256`` (pinned to the published file),
so DVC's record of the data holds even when the override is used. Nothing is
written unless the data is valid.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

import pandas as pd

from stages.common import (
    FEATURES,
    INDEX_COLUMN,
    NUMERIC_COLUMNS,
    RAW_COLUMNS,
    RAW_CSV,
    REPORTS_DIR,
    UserError,
    atomic_path,
    cli,
    write_json,
)
from stages.params import load_section

ENV_OVERRIDE = "SPOTIFY_TRACKS_URL"
TIMEOUT_S = 60
RETRIES = 3
CHUNK = 1 << 16


def resolve_source(param_url: str, environ=os.environ) -> str:
    return environ.get(ENV_OVERRIDE) or param_url


def _is_http(source: str) -> bool:
    return urllib.parse.urlparse(source).scheme in ("http", "https")


def _local_path(source: str) -> Path:
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    return Path(source).expanduser()


def _download(url: str, timeout: float, retries: int, backoff: float) -> bytes:
    from tqdm import tqdm  # noqa: PLC0415 - only needed for downloads

    last_error = "unknown error"
    for attempt in range(1, retries + 1):
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "spotify-genre"})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                buffer = io.BytesIO()
                with tqdm(
                    total=total, unit="B", unit_scale=True, desc="download",
                    file=sys.stderr, mininterval=2, disable=None,
                ) as bar:
                    while chunk := response.read(CHUNK):
                        buffer.write(chunk)
                        bar.update(len(chunk))
                return buffer.getvalue()
        except urllib.error.HTTPError as exc:
            last_error = f"HTTP {exc.code} {exc.reason}"
            if 400 <= exc.code < 500 and exc.code != 429:
                break  # the URL is wrong; retrying won't help
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            last_error = str(getattr(exc, "reason", exc))
        if attempt < retries:
            time.sleep(backoff * 2 ** (attempt - 1))
    raise UserError(f"{url}: download failed after {attempt} attempt(s): {last_error}")


def read_source(source: str, timeout: float = TIMEOUT_S, retries: int = RETRIES,
                backoff: float = 1.0) -> bytes:
    """Return the source's bytes (still compressed if it was)."""
    if _is_http(source):
        return _download(source, timeout, retries, backoff)
    path = _local_path(source)
    if not path.is_file():
        raise UserError(f"{source}: no such file")
    return path.read_bytes()


def decode(raw: bytes, source: str) -> bytes:
    """Decompress gzip (detected by content, not name) and reject non-CSV payloads."""
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except EOFError:
            raise UserError(f"{source}: gzip data is truncated (incomplete download?)") from None
        except (gzip.BadGzipFile, zlib.error, OSError) as exc:
            raise UserError(f"{source}: gzip data is corrupt ({exc})") from None
    head = raw[:512].lstrip().lower()
    if not head:
        raise UserError(f"{source}: file is empty")
    if head.startswith(b"version https://git-lfs"):
        raise UserError(
            f"{source}: is a Git LFS pointer file, not the data (fetch the real file, "
            "e.g. a /resolve/ URL or 'git lfs pull')"
        )
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        raise UserError(f"{source}: is an HTML/XML page, not a CSV (wrong URL or a login page?)")
    return raw


def parse_tracks(csv_bytes: bytes, source: str) -> pd.DataFrame:
    """Parse and validate the CSV: expected columns, numeric cells, at least one row."""
    try:
        frame = pd.read_csv(io.BytesIO(csv_bytes), low_memory=False)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{source}: not a readable CSV ({first})") from None
    missing = [c for c in RAW_COLUMNS if c not in frame.columns]
    if missing:
        shown = ["(unnamed index)" if c == INDEX_COLUMN else c for c in missing]
        raise UserError(f"{source}: missing column(s) {', '.join(shown)}")
    if frame.empty:
        raise UserError(f"{source}: has a header but no data rows")
    for column in [INDEX_COLUMN, *NUMERIC_COLUMNS]:
        _check_numeric(frame[column], column, source)
    _check_boolean(frame["explicit"], source)
    return frame


def _first_bad(mask: pd.Series) -> int:
    # +2: 1-based and the header line, so it matches what an editor shows
    return int(mask.to_numpy().nonzero()[0][0]) + 2


def _check_numeric(column: pd.Series, name: str, source: str) -> None:
    if pd.api.types.is_numeric_dtype(column):
        return
    coerced = pd.to_numeric(column, errors="coerce")
    bad = coerced.isna() & column.notna()
    if bad.any():
        line = _first_bad(bad)
        value = column[bad].iloc[0]
        raise UserError(
            f"{source}: column {name!r}, line {line}: {value!r} is not a number"
        )


def _check_boolean(column: pd.Series, source: str) -> None:
    if pd.api.types.is_bool_dtype(column):
        return
    allowed = {"true", "false", "0", "1", "1.0", "0.0"}
    text = column.astype(str).str.strip().str.lower()
    bad = ~text.isin(allowed) & column.notna()
    if bad.any():
        raise UserError(
            f"{source}: column 'explicit', line {_first_bad(bad)}: "
            f"{column[bad].iloc[0]!r} is not True/False"
        )


def provenance_name(source: str) -> str:
    """How the source is recorded in the committed report: an http(s) URL without its
    query (it may hold a token), a local file by its base name only (a path of one
    machine says nothing to another; the sha256 identifies the data)."""
    if _is_http(source):
        parsed = urllib.parse.urlparse(source)
        host = parsed.hostname + (f":{parsed.port}" if parsed.port else "")  # no user:password@
        return urllib.parse.urlunparse((parsed.scheme, host, parsed.path, "", "", ""))
    return _local_path(source).name


def check_sha256(digest: str, expected: str | None, source: str) -> None:
    if expected and digest != expected.lower():
        raise UserError(
            f"{source}: sha256 mismatch: expected {expected.lower()} (fetch.sha256), got {digest}; "
            "to use this file on purpose: dvc exp run -S fetch.sha256=" + digest
        )


def fetch(source: str, expected_sha256: str | None, out_csv: Path, out_report: Path,
          **read_kwargs) -> dict:
    raw = read_source(source, **read_kwargs)
    csv_bytes = decode(raw, source)
    digest = hashlib.sha256(csv_bytes).hexdigest()
    check_sha256(digest, expected_sha256, source)
    frame = parse_tracks(csv_bytes, source)
    with atomic_path(out_csv) as tmp:
        tmp.write_bytes(csv_bytes)
    report = {
        "source": provenance_name(source),
        "sha256_pinned": bool(expected_sha256),
        "sha256": digest,
        "bytes": len(csv_bytes),
        "rows": int(len(frame)),
        "columns": int(frame.shape[1]),
        "features": len(FEATURES),
    }
    write_json(out_report, report)
    return report


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RAW_CSV)
    parser.add_argument("--report", type=Path, default=REPORTS_DIR / "fetch.json")
    args = parser.parse_args(argv)
    params = load_section("fetch")
    source = resolve_source(params.url)
    report = fetch(source, params.sha256, args.out, args.report)
    checked = "matches fetch.sha256" if report["sha256_pinned"] else "fetch.sha256 not set"
    print(f"fetch: {report['rows']} rows, {report['bytes']} bytes, sha256 {report['sha256']} "
          f"({checked}) from {source}")


if __name__ == "__main__":
    main()
