"""Stage fetch: download (or copy) the Spotify Tracks CSV, validate it, write data/raw/tracks.csv.

The source is param ``fetch.url``; the environment variable SPOTIFY_TRACKS_URL
overrides it (a local copy, say). Either may be an http(s) URL, a file:// URL or a
plain path, to a plain or gzip-compressed CSV. Whatever the source, the parsed table
must have the content hash in param ``fetch.content_sha256`` (pinned to the published
data), so DVC's record of the data holds even when the override is used. The content
hash is the sha256 of the table in a canonical text form (``canonical_table``), so
the same rows spelled another way (CRLF, a BOM, quoted fields, ``1e-06`` for
``1.0e-6``, ``FALSE`` for ``False``) pass; param ``fetch.sha256``, when set, also pins
the exact bytes. Nothing is written unless the data is valid.
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
    GENRE_COLUMN,
    ID_COLUMN,
    INDEX_COLUMN,
    NUMERIC_COLUMNS,
    RAW_COLUMNS,
    RAW_CSV,
    REPORTS_DIR,
    TEXT_COLUMNS,
    UserError,
    atomic_path,
    cli,
    write_json,
)
from stages.params import load_section

ENV_OVERRIDE = "SPOTIFY_TRACKS_URL"
STRING_COLUMNS = [ID_COLUMN, *TEXT_COLUMNS, GENRE_COLUMN]
BOOLEAN_TEXT = {"true": "True", "1": "True", "1.0": "True",
                "false": "False", "0": "False", "0.0": "False"}
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
        # text columns stay text, whatever they look like (a track named 1999)
        frame = pd.read_csv(io.BytesIO(csv_bytes), low_memory=False,
                            dtype={c: str for c in STRING_COLUMNS})
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
    allowed = set(BOOLEAN_TEXT)
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


def canonical_table(frame: pd.DataFrame) -> bytes:
    """The table as text that depends on its content only, not on how the CSV spelled it.

    Columns in a fixed order (the schema's, then any others by name); numbers as the
    repr of their float64 value (1e-06, 1.0e-6 and 0.000001 are one number), explicit as
    True/False, text as is, missing cells empty; one LF-terminated line per row, in the
    file's order (the rows' order is content: the index column records it).
    """
    extra = sorted(c for c in frame.columns if c not in RAW_COLUMNS)
    canonical = {}
    for column in [*RAW_COLUMNS, *extra]:
        values = frame[column]
        if column in (INDEX_COLUMN, *NUMERIC_COLUMNS):
            numbers = pd.to_numeric(values).astype("float64")
            text = pd.Series([repr(x) for x in numbers.tolist()], index=values.index)
        elif column == "explicit":
            text = values.astype(str).str.strip().str.lower().map(BOOLEAN_TEXT)
        else:
            text = values.astype(str)
        canonical[column] = text.where(values.notna(), "")
    return pd.DataFrame(canonical).to_csv(index=False, lineterminator="\n").encode()


def content_sha256(frame: pd.DataFrame) -> str:
    return hashlib.sha256(canonical_table(frame)).hexdigest()


def check_sha256(digest: str, expected: str | None, source: str) -> None:
    """The optional byte pin (param fetch.sha256): the decompressed file, byte for byte."""
    if expected and digest != expected.lower():
        raise UserError(
            f"{source}: sha256 mismatch: expected {expected.lower()} (fetch.sha256), got {digest}; "
            "to use this file on purpose: dvc exp run -S fetch.sha256=" + digest
        )


def check_content_sha256(digest: str, expected: str | None, byte_digest: str,
                         source: str) -> None:
    """The content pin (param fetch.content_sha256): refuses other rows or values only."""
    if expected and digest != expected.lower():
        raise UserError(
            f"{source}: content mismatch: the table's content sha256 is {digest}, expected "
            f"{expected.lower()} (fetch.content_sha256); the file's bytes have sha256 "
            f"{byte_digest}; to use this file on purpose: "
            f"dvc exp run -S fetch.content_sha256={digest}"
        )


def fetch(source: str, out_csv: Path, out_report: Path, *,
          content_sha256_pin: str | None = None, sha256_pin: str | None = None,
          **read_kwargs) -> dict:
    raw = read_source(source, **read_kwargs)
    csv_bytes = decode(raw, source)
    digest = hashlib.sha256(csv_bytes).hexdigest()
    check_sha256(digest, sha256_pin, source)
    frame = parse_tracks(csv_bytes, source)
    content_digest = content_sha256(frame)
    check_content_sha256(content_digest, content_sha256_pin, digest, source)
    with atomic_path(out_csv) as tmp:
        tmp.write_bytes(csv_bytes)
    report = {
        "source": provenance_name(source),
        "content_sha256_pinned": bool(content_sha256_pin),
        "content_sha256": content_digest,
        "sha256_pinned": bool(sha256_pin),
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
    report = fetch(source, args.out, args.report, content_sha256_pin=params.content_sha256,
                   sha256_pin=params.sha256)
    checked = [f"{name} {'matches' if report[f'{param}_pinned'] else 'not pinned'}"
               for name, param in (("content", "content_sha256"), ("bytes", "sha256"))]
    print(f"fetch: {report['rows']} rows, {report['bytes']} bytes, "
          f"content sha256 {report['content_sha256']}, sha256 {report['sha256']} "
          f"({', '.join(checked)}) from {source}")


if __name__ == "__main__":
    main()
