"""Reading the track files people bring (predict, and adapt later): CSV or JSON, in chunks.

One reader for both formats, streaming in bounded memory: ``InputReader(path, features)``
opens the file, finds the columns, and yields ``Chunk``s of at most ``chunk_rows`` rows,
each a float64 array of the requested features (NaN in a column the file lacks), the rows'
physical line numbers (or JSON entry numbers), their track ids, and one message per row it
skipped. It never raises for a missing feature: ``reader.missing`` names them and the
caller decides.

CSV: read with the csv module, never with pandas' index inference, so a row with more or
fewer fields than the header is skipped and reported by its line, never shifted. The
separator is sniffed from the header (``,`` ``;`` tab); line numbers are physical (blank
lines and quoted multi-line fields counted; a UTF-8 BOM is dropped). Decimal commas
(``0,856``) are refused unless ``decimal=","``.

Parquet (named .parquet/.pq, or starting with its magic bytes): read a row group batch at a
time with pyarrow, only the wanted columns; positions are 1-based row numbers (unit "row");
numbers are read as their exact text, so a value is checked as the same value in a CSV is.

JSON: ``{"audio_features": [...]}``, a bare list, one object, or JSON Lines; parsed one
value at a time (``json.JSONDecoder.raw_decode`` over a sliding buffer), so an array is never
held whole. Numbers are kept as their text (``JsonNumber``) and read exactly as the same
text in a CSV is: quoted numbers work, ``NaN`` is "not a finite number", ``1e400`` "does not
fit a 64-bit float", never a traceback.

Column names: matched case-insensitively with spaces, hyphens and underscores ignored;
other files' names are read through ``ALIASES``; ``renames`` (``--column SOURCE=FEATURE``)
wins over both.

Plausibility: ``implausible`` marks values far outside each feature's training range (see
``RANGE_MARGIN``, ``LOG_FACTOR``); ``PlausibilityCheck`` counts them per column over the
chunks of a file.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from stages.common import FEATURES, ID_COLUMN, UserError

# Rows read, predicted and written at a time. 16,384 rather than 65,536: predict's peak RSS
# 903 MB against 1,104 MB (the MLP, 100,000 rows), no slower for the networks; boosting
# pays one call per tree per chunk (8,192-row chunks cost it 9% on 20,000 rows).
DEFAULT_CHUNK_ROWS = 16_384
BOOLEAN_FEATURES = ("explicit", "mode")  # also read from true/false (any case)
SECONDS_TARGET = "duration_s"  # --column NAME=duration_s: seconds, read as duration_ms
MS_MEDIAN = 1_000  # a duration column whose median is below this is in seconds, not ms
URI_PREFIXES = ("spotify:track:", "https://open.spotify.com/track/")
PARQUET_SUFFIXES = (".parquet", ".pq")
SEPARATOR_NAMES = {",": "commas", ";": "';'", "\t": "tabs"}


class Alias(NamedTuple):
    name: str  # how other files spell it (matched after ``normalise``)
    target: str  # what it is read as: a feature or track_id
    scale: float = 1.0  # values are multiplied by this (seconds -> ms)
    check_ms: bool = False  # only when its values look like milliseconds (median >= MS_MEDIAN)


# Other files' names for our columns, in one table (the docs list it). A file's own name for
# a column (e.g. `Duration MS`) always wins over an alias. Two aliases of one feature in one
# file are ambiguous (an error that names the rename), except for track_id: the API's JSON
# has both `id` and `uri`, the same track, and the first in this order is used.
ALIASES = (
    Alias("track_popularity", "popularity"),
    Alias("song_popularity", "popularity"),
    Alias("duration", "duration_ms", check_ms=True),
    Alias("song_duration_ms", "duration_ms"),
    Alias("duration_s", "duration_ms", scale=1000.0),
    Alias("duration_sec", "duration_ms", scale=1000.0),
    Alias("duration_seconds", "duration_ms", scale=1000.0),
    Alias("audio_mode", "mode"),
    Alias("audio_valence", "valence"),
    Alias("id", ID_COLUMN),
    Alias("track_uri", ID_COLUMN),  # spotify:track:XYZ -> XYZ
    Alias("uri", ID_COLUMN),
)

# --- plausibility rule --------------------------------------------------------------------
# A value is implausible when it lies further outside the feature's training range [lo, hi]
# than RANGE_MARGIN times the range's width (danceability 0-0.985 allows -0.25..1.23, so 73
# is caught; tempo 0-243 allows up to 304, so 250 passes). duration_ms spans three decades,
# so it is compared on a log scale: below lo / LOG_FACTOR or above hi * LOG_FACTOR (8,586 ms
# -> anything under 859 is caught: every duration in seconds of a track under 14 minutes).
RANGE_MARGIN = 0.25
LOG_FACTOR = 10.0
LOG_SCALE_FEATURES = ("duration_ms",)

_BOOL_TEXT = {"true": "1", "false": "0", "True": "1", "False": "0", "TRUE": "1", "FALSE": "0"}
_DECIMAL_COMMA = re.compile(r"\s*[+-]?\d*,\d+\s*\Z")
_NON_FINITE = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}
_NAME_NOISE = re.compile(r"[\s_\-]+")


def normalise(name: str) -> str:
    """How column names are compared: `Duration MS`, `duration-ms`, `durationMs` all match."""
    return _NAME_NOISE.sub("", name.strip().lower())


class JsonNumber(str):
    """A JSON number's text as written in the file: read like the same text in a CSV."""


def is_json(path: Path) -> bool:
    """True when the content starts with '{' or '[' after whitespace (and a UTF-8 BOM)."""
    with open(path, "rb") as handle:
        head = handle.read(1 << 16).removeprefix(b"\xef\xbb\xbf").lstrip()
        while not head:  # only whitespace so far
            chunk = handle.read(1 << 16)
            if not chunk:
                return False
            head = chunk.lstrip()
    return head[:1] in (b"{", b"[")


def is_parquet(path: Path) -> bool:
    """True for a Parquet file: named .parquet/.pq, or starting with its magic bytes."""
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return True
    with open(path, "rb") as handle:
        return handle.read(4) == b"PAR1"


def _parquet_values(column) -> list:
    """A Parquet column as the reader's cells: numbers as their exact text (``repr``
    round-trips a float), so they are read like the same number in a CSV or JSON; strings,
    booleans and nulls as they are."""
    import pyarrow as pa  # noqa: PLC0415

    values = column.to_pylist()
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type) or \
            pa.types.is_boolean(column.type):
        return values
    return [v if v is None or isinstance(v, (str, bool)) else JsonNumber(repr(v))
            for v in values]


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def show_text(value) -> str:
    """A CSV value in a message."""
    return repr(_clip(value)) if isinstance(value, str) else repr(value)


def _plain(value):
    """JSON value with its numbers as numbers again, for a message."""
    if isinstance(value, JsonNumber):
        try:
            number = float(value)
        except ValueError:
            return str(value)
        if not math.isfinite(number):
            return str(value)
        return int(value) if value.lstrip("-").isdigit() else number
    if isinstance(value, list):
        return [_plain(v) for v in value[:5]]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in list(value.items())[:5]}
    return value


def show_json(value) -> str:
    """A JSON value in a message: as JSON (strings quoted, numbers as written)."""
    if isinstance(value, JsonNumber):
        return _clip(str(value))
    return _clip(json.dumps(_plain(value), default=str))


# --- column names ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where one wanted column comes from in the file."""

    name: str  # as the file spells it
    index: int  # its position in the header (CSV) or in the keys seen (JSON)
    target: str  # a feature, track_id or the pass-through column
    via: str  # "name", "alias" or "--column"
    scale: float = 1.0
    check_ms: bool = False


def rename_targets(passthrough: str | None = None) -> list[str]:
    """What --column SOURCE=TARGET may name."""
    return [*FEATURES, ID_COLUMN, SECONDS_TARGET, *([passthrough] if passthrough else [])]


def parse_renames(specs: list[str] | None, passthrough: str | None = None) -> dict[str, str]:
    """``["length=duration_ms", ...]`` -> {"length": "duration_ms"}; one clear line when wrong."""
    renames: dict[str, str] = {}
    targets = rename_targets(passthrough)
    for spec in specs or []:
        source, equals, target = spec.partition("=")
        source, target = source.strip(), target.strip()
        if not equals or not source or not target:
            raise UserError(f"--column {spec}: expected SOURCE=FEATURE (e.g. --column "
                            "length=duration_ms)")
        if target not in targets:
            raise UserError(f"--column {spec}: {target!r} is not one of {', '.join(targets)}")
        if source in renames:
            raise UserError(f"--column {spec}: {source!r} is renamed twice")
        if target in renames.values():
            raise UserError(f"--column {spec}: two columns renamed to {target!r}")
        renames[source] = target
    return renames


def resolve_columns(header: list[str], wanted: list[str], renames: dict[str, str] | None,
                    where: str, item: str = "column") -> dict[str, Source]:
    """Which header position feeds each wanted name: --column first, then the file's own
    name (normalised), then ``ALIASES``. Raises one line for a duplicated or ambiguous name."""
    sources: dict[str, Source] = {}
    used: set[int] = set()
    norms = [normalise(name) for name in header]
    for source_name, target in (renames or {}).items():
        hits = [i for i, name in enumerate(header) if name == source_name] or \
               [i for i, norm in enumerate(norms) if norm == normalise(source_name)]
        if not hits:
            shown = ", ".join(repr(h) for h in header[:12]) + (", …" if len(header) > 12 else "")
            raise UserError(f"{where}: --column {source_name}={target}: no {item} "
                            f"{source_name!r} (the file has {shown})")
        if len(hits) > 1:
            raise _duplicate(where, item, header, hits)
        feature = "duration_ms" if target == SECONDS_TARGET else target
        if feature in wanted:
            sources[feature] = Source(header[hits[0]], hits[0], feature, "--column",
                                      scale=1000.0 if target == SECONDS_TARGET else 1.0)
            used.add(hits[0])
    for target in wanted:
        if target in sources:
            continue
        exact = [i for i, norm in enumerate(norms) if norm == normalise(target) and i not in used]
        if len(exact) > 1:
            raise _duplicate(where, item, header, exact)
        if exact:
            sources[target] = Source(header[exact[0]], exact[0], target, "name")
            used.add(exact[0])
            continue
        candidates = [(alias, i) for alias in ALIASES if alias.target == target
                      for i, norm in enumerate(norms)
                      if norm == normalise(alias.name) and i not in used]
        same = [i for alias, i in candidates if alias == candidates[0][0]] if candidates else []
        if len(same) > 1:
            raise _duplicate(where, item, header, same)
        if len(candidates) > 1 and target != ID_COLUMN:
            names = [header[i] for _, i in candidates]
            raise UserError(
                f"{where}: {item}s {' and '.join(repr(n) for n in names)} could each be "
                f"{target}: rename the one to use to {target}, or pass --column "
                f"{names[0]}={target}")
        if candidates:
            alias, i = candidates[0]
            sources[target] = Source(header[i], i, target, "alias", alias.scale, alias.check_ms)
            used.add(i)
    return sources


def _duplicate(where: str, item: str, header: list[str], hits: list[int]) -> UserError:
    names = " and ".join(f"{header[i]!r} ({item} {i + 1})" for i in hits)
    return UserError(f"{where}: {names} name the same {item}: remove or rename all but one "
                     f"(or pick one with --column {header[hits[0]]}=FEATURE)")


def mapping_note(sources: dict[str, Source], item: str, quiet: tuple[str, ...] = ()) -> str | None:
    """'read column track_popularity as popularity, duration as duration_ms' (None: nothing mapped)."""
    parts = []
    for source in sorted(sources.values(), key=lambda s: s.index):
        if source.via == "name" or (source.via == "alias" and source.name in quiet):
            continue
        how = [*(["seconds × 1000"] if source.scale != 1.0 else []),
               *(["--column"] if source.via == "--column" else [])]
        parts.append(f"{source.name} as {source.target}" + (f" ({', '.join(how)})" if how else ""))
    return f"read {item} {', '.join(parts)}" if parts else None


# --- values ---------------------------------------------------------------------------------


class DecimalComma(Exception):
    """A value such as '0,856' while the decimal mark is '.'."""

    def __init__(self, row: int, text: str):
        super().__init__(text)
        self.row, self.text = row, text


def _read_cell(value, boolean: bool, show) -> tuple[float, str | None]:
    """(number, None), or (NaN, what is wrong with it)."""
    nan = math.nan
    if value is None:
        return nan, "missing"
    if isinstance(value, bool):  # JSON true/false
        return (float(value), None) if boolean else (nan, f"{show(value)} is not a number")
    if not isinstance(value, str):
        return nan, f"{show(value)} is not a number"
    text = value.strip()
    if not text:
        return nan, "missing"
    if boolean and text.lower() in ("true", "false"):
        return float(text.lower() == "true"), None
    try:
        number = float(text)
    except ValueError:
        return nan, f"{show(value)} is not a number"
    if math.isfinite(number):
        return number, None
    if text.lower() in _NON_FINITE:
        return nan, f"{show(value)} is not a finite number"
    return nan, f"{show(value)} does not fit a 64-bit float"


def parse_column(raw: list, feature: str, decimal: str = ".", show=show_text,
                 text_only: bool = False) -> tuple[np.ndarray, dict[int, str]]:
    """Text (or JSON) values of one feature -> (float64 array, {row: what is wrong}).

    A bad value is NaN in the array. Raises DecimalComma for '0,856' unless decimal=','.
    ``text_only``: every value is a str (a CSV column), so no need to look for others.
    """
    boolean = feature in BOOLEAN_FEATURES
    texts = raw
    if boolean:
        texts = [_BOOL_TEXT.get(v, v) if isinstance(v, str) else v for v in texts]
    if decimal == ",":
        texts = [v.replace(",", ".") if isinstance(v, str) else v for v in texts]
    try:  # the usual case: every value is number text (JSON true/false goes the slow way)
        if not text_only and not set(map(type, texts)) <= {str, JsonNumber}:
            raise TypeError
        values = np.fromiter(map(float, texts), dtype=np.float64, count=len(texts))
        rows = np.flatnonzero(~np.isfinite(values))
    except (TypeError, ValueError):
        values = np.empty(len(texts), dtype=np.float64)
        rows = range(len(texts))
    problems: dict[int, str] = {}
    for row in rows:
        number, what = _read_cell(texts[row], boolean, show)
        values[row] = number
        if what is not None:
            value = raw[row]
            if (decimal == "." and isinstance(value, str) and _DECIMAL_COMMA.match(value)):
                raise DecimalComma(int(row), value)
            problems[int(row)] = what
    return values, problems


def track_id_text(value) -> str:
    """A track id as text: a Spotify URI or link becomes the bare id."""
    if value is None:
        return ""
    if not isinstance(value, str):
        value = show_json(value)
    for prefix in URI_PREFIXES:
        if value.startswith(prefix):
            return value[len(prefix):].split("?", 1)[0]
    return value


# --- the reader -----------------------------------------------------------------------------


@dataclass
class Chunk:
    """Up to chunk_rows records of a file, parsed; skipped rows are only in ``problems``."""

    values: np.ndarray  # float64 (rows, len(features)); NaN in the columns the file lacks
    positions: np.ndarray  # int64: physical line (CSV, JSON Lines) or 1-based JSON entry
    track_ids: np.ndarray | None  # object array of str, None when the file has no track id
    passthrough: np.ndarray | None  # object array of str: the pass-through column, or None
    problems: list[tuple[int, str]] = field(default_factory=list)  # (position, message), sorted


class InputReader:
    """``with InputReader(path, features) as reader: for chunk in reader.chunks(): ...``

    After opening: ``unit`` ("line" or "entry", what positions count), ``item`` ("column"
    or "field"), ``missing`` (requested features the file lacks), ``has_track_id``,
    ``has_passthrough``, ``notes`` (lines to say once: separator, columns mapped).
    """

    def __init__(self, path: str | Path, features: list[str], *, decimal: str = ".",
                 renames: dict[str, str] | None = None, passthrough: str | None = None,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS):
        self.path = Path(path)
        self.features = list(features)
        self.decimal = decimal
        self.passthrough = passthrough
        self.chunk_rows = max(int(chunk_rows), 1)
        self.notes: list[str] = []
        self.records = 0  # records read so far (rows or entries, skipped ones included)
        self.ragged = 0
        if not self.path.is_file():
            raise UserError(f"{self.path}: input file not found")
        try:
            self._handle = open(self.path, encoding="utf-8-sig", newline="")
        except OSError as exc:
            raise UserError(f"{self.path}: cannot be read ({exc.strerror})") from None
        try:
            self._open(renames)
            # parse the first chunk now: its errors (decimal commas, a duration in seconds,
            # most rows ragged) come before anything is said or written
            self._chunks = self._parsed_chunks()
            self._first_chunk = next(self._chunks, None)
        except BaseException:
            self._handle.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self) -> None:
        self._handle.close()

    @property
    def wanted(self) -> list[str]:
        return [*self.features, ID_COLUMN, *([self.passthrough] if self.passthrough else [])]

    def _open(self, renames) -> None:
        if is_parquet(self.path):
            self.kind, self.item, self.unit, self.show = "parquet", "column", "row", show_json
            header = self._parquet_header()
            quiet = ()
        elif is_json(self.path):
            self.kind, self.item, self.show = "json", "field", show_json
            self._json = JsonValues(self._handle, self.path)
            self._entries = self._json.entries()
            self._first = list(islice(self._entries, self.chunk_rows))
            self.unit = self._json.unit
            header = self._json_header(self._first)
            if not header and len(self._first) == self.chunk_rows:
                header = self._json_header_further()
            quiet = ("id",)  # the API's own name for it: nothing to say
        else:
            self.kind, self.item, self.unit, self.show = "csv", "column", "line", show_text
            header = self._csv_header()
            quiet = ()
        self.header = header  # the file's column names (a JSON file's keys, in order seen)
        self.sources = resolve_columns(header, self.wanted, renames, str(self.path), self.item)
        note = mapping_note(self.sources, self.item, quiet)
        if note:
            self.notes.append(note)
        # no object at all (only nulls): nothing is missing, every entry is reported instead
        self.missing = [f for f in self.features if f not in self.sources] if header else []
        self.has_track_id = ID_COLUMN in self.sources
        self.has_passthrough = bool(self.passthrough) and self.passthrough in self.sources

    # --- CSV ---

    def _csv_header(self) -> list[str]:
        try:
            line = next((line for line in self._handle if line.strip()), None)
            if line is None:
                raise UserError(f"{self.path}: file is empty")
            unquoted = re.sub(r'"[^"]*"', "", line)
            counts = {sep: unquoted.count(sep) for sep in SEPARATOR_NAMES}
            self.separator = max(counts, key=lambda sep: (counts[sep], sep == ","))
            if self.separator != ",":
                self.notes.append(f"columns separated by {SEPARATOR_NAMES[self.separator]}")
            self._handle.seek(0)
            self._csv = csv.reader(self._handle, delimiter=self.separator, quotechar='"',
                                   doublequote=True, strict=False)
            header = next(fields for fields in self._csv if any(f.strip() for f in fields))
        except csv.Error as exc:
            raise UserError(f"{self.path}: line {self._csv.line_num}: not readable as CSV "
                            f"({exc})") from None
        except UnicodeDecodeError:
            raise not_utf8(self.path) from None
        self.header_line = self._csv.line_num
        self.width = len(header)
        return header

    def _csv_batches(self) -> Iterator[tuple[list, list, list]]:
        """(positions, rows of the header's width, problems), chunk_rows records at a time."""
        reader, width, noun, size = self._csv, self.width, self.item + "s", self.chunk_rows
        previous = reader.line_num
        positions, rows, problems = [], [], []
        count = 0
        try:
            for fields in reader:
                start, previous = previous + 1, reader.line_num
                if len(fields) == width:
                    positions.append(start)
                    rows.append(fields)
                elif not fields or (len(fields) == 1 and not fields[0].strip()):
                    continue  # a blank line
                else:
                    self.ragged += 1
                    problems.append((start, f"line {start}: {len(fields)} fields where the "
                                            f"header has {width} {noun}; row skipped"))
                count += 1
                if count == size:
                    self.records += count
                    yield positions, rows, problems
                    positions, rows, problems = [], [], []
                    count = 0
        except csv.Error as exc:
            raise UserError(f"{self.path}: line {reader.line_num}: not readable as CSV "
                            f"({exc})") from None
        except UnicodeDecodeError:
            raise not_utf8(self.path) from None
        self.records += count
        if count:
            yield positions, rows, problems

    def _check_ragged(self) -> None:
        if self.records and self.ragged * 2 > self.records:
            raise UserError(f"{self.path}: {self.ragged:,} of {self.records:,} rows have more "
                            f"or fewer fields than the header's {self.width} (line "
                            f"{self.header_line}): a header that lacks a name, or a trailing "
                            "separator? nothing was predicted")

    # --- Parquet ---

    def _parquet_header(self) -> list[str]:
        import pyarrow.parquet as pq  # noqa: PLC0415

        try:
            self._parquet = pq.ParquetFile(self.path)
        except Exception as exc:  # noqa: BLE001 - pyarrow's errors for a broken file vary
            raise UserError(f"{self.path}: not a readable Parquet file ({exc})") from None
        return list(self._parquet.schema_arrow.names)

    def _parquet_batches(self) -> Iterator[tuple[list, dict, list]]:
        """(positions: 1-based row numbers, {column: values}, no problems) per chunk."""
        import pyarrow as pa  # noqa: PLC0415

        names = sorted({source.name for source in self.sources.values()})
        start = 0
        try:
            for batch in self._parquet.iter_batches(batch_size=self.chunk_rows, columns=names):
                count = batch.num_rows
                self.records += count
                columns = {name: _parquet_values(batch.column(name)) for name in names}
                yield list(range(start + 1, start + count + 1)), columns, []
                start += count
        except (pa.ArrowException, OSError) as exc:  # a damaged file
            raise UserError(f"{self.path}: from row {start + 1}: not readable as Parquet "
                            f"({exc})") from None

    # --- JSON ---

    def _json_header(self, entries: list) -> list[str]:
        """A JSON file's "columns": the keys of its first chunk's objects, in order seen."""
        keys: dict[str, None] = {}
        for _, value in entries:
            if isinstance(value, dict):
                keys.update(dict.fromkeys(value))
        return list(keys)

    def _json_header_further(self) -> list[str]:
        """No object in the first chunk (all null?): find the first objects in a second pass,
        rather than holding the entries before them."""
        with open(self.path, encoding="utf-8-sig", newline="") as handle:
            objects = (item for item in JsonValues(handle, self.path).entries()
                       if isinstance(item[1], dict))
            return self._json_header(list(islice(objects, self.chunk_rows)))

    def _json_batches(self) -> Iterator[tuple[list, list, list]]:
        batch = self._first
        self._first = []
        while batch:
            self.records += len(batch)
            positions, objects, problems = [], [], []
            for position, value in batch:
                if isinstance(value, dict):
                    positions.append(position)
                    objects.append(value)
                elif value is None:
                    problems.append((position, f"{self.unit} {position}: null (unknown track "
                                               "id?); skipped"))
                else:
                    problems.append((position, f"{self.unit} {position}: {show_json(value)} "
                                               "is not an object; skipped"))
            yield positions, objects, problems
            batch = positions = objects = problems = value = None  # freed before the next
            batch = list(islice(self._entries, self.chunk_rows))

    # --- both ---

    def chunks(self) -> Iterator[Chunk]:
        """The file's chunks, in order (once)."""
        if self._first_chunk is not None:
            first, self._first_chunk = self._first_chunk, None
            yield first
        yield from self._chunks

    def _parsed_chunks(self) -> Iterator[Chunk]:
        batches = {"csv": self._csv_batches, "json": self._json_batches,
                   "parquet": self._parquet_batches}[self.kind]()
        first = True
        for positions, records, problems in batches:
            if first and self.kind == "csv":
                self._check_ragged()
            chunk = self._parse(positions, records, problems, first)
            del positions, records, problems  # not held while the next batch is read
            yield chunk
            first = False
        if self.kind == "csv":
            self._check_ragged()

    def _raw_column(self, records: list, source: Source) -> list:
        if self.kind == "csv":
            index = source.index
            return [fields[index] for fields in records]
        if self.kind == "parquet":
            return records[source.name]
        name = source.name
        return [entry.get(name) for entry in records]

    def _parse(self, positions: list, records: list, problems: list, first: bool) -> Chunk:
        count = len(positions)
        values = np.full((count, len(self.features)), np.nan)
        bad: dict[int, tuple[str, str]] = {}  # row -> (feature, what): the first bad feature
        noun = "entry" if self.unit == "entry" else "row"
        for j, feature in enumerate(self.features):
            source = self.sources.get(feature)
            if source is None:
                continue
            try:
                column, wrong = parse_column(self._raw_column(records, source), feature,
                                             self.decimal, self.show, self.kind == "csv")
            except DecimalComma as exc:
                raise UserError(
                    f"{self.path}: {self.unit} {positions[exc.row]}: {self.item} "
                    f"{source.name!r}: {exc.text!r} has a decimal comma: pass --decimal , "
                    "if the file writes decimals with a comma") from None
            if first and source.check_ms:
                self._check_milliseconds(column, source)
            if source.scale != 1.0:
                column *= source.scale
            values[:, j] = column
            for row, what in wrong.items():
                bad.setdefault(row, (source.name, what))
        for row, (name, what) in bad.items():
            problems.append((positions[row], f"{self.unit} {positions[row]}: {self.item} "
                                             f"{name!r}: {what}; {noun} skipped"))
        problems.sort(key=lambda item: item[0])
        keep = np.ones(count, dtype=bool)
        keep[list(bad)] = False
        track_ids = passthrough = None
        if self.has_track_id:
            raw = self._raw_column(records, self.sources[ID_COLUMN])
            if self.kind != "csv" or any(p in "\n".join(raw) for p in URI_PREFIXES):
                raw = [track_id_text(v) for v in raw]  # (a cheap look first: usually none)
            track_ids = np.array(raw, dtype=object)[keep]
        if self.has_passthrough:
            raw = self._raw_column(records, self.sources[self.passthrough])
            passthrough = np.array(["" if v is None else v if isinstance(v, str)
                                    else show_json(v) for v in raw], dtype=object)[keep]
        return Chunk(values[keep], np.asarray(positions, dtype=np.int64)[keep], track_ids,
                     passthrough, problems)

    def _check_milliseconds(self, column: np.ndarray, source: Source) -> None:
        finite = column[np.isfinite(column)]
        if finite.size and np.median(finite) < MS_MEDIAN:
            raise UserError(
                f"{self.path}: {self.item} {source.name!r} looks like seconds (median "
                f"{np.median(finite):g}), the model takes {source.target} in milliseconds: "
                f"pass --column {source.name}={SECONDS_TARGET} (or rename it {SECONDS_TARGET})")


class JsonValues:
    """The entries of a JSON file, one value at a time, in bounded memory.

    ``entries()`` yields (position, value): the 1-based entry of an array (bare or under
    "audio_features") or the physical line of a JSON Lines value; ``unit`` says which.
    """

    BLOCK = 1 << 20  # characters read at a time
    MAX_VALUE = 64 << 20  # one entry larger than this is refused, not buffered on
    _SPACE = re.compile(r"[ \t\n\r]*")
    _WRAPPED = re.compile(r'\{[ \t\n\r]*"audio_features"[ \t\n\r]*:[ \t\n\r]*\[')

    def __init__(self, handle, path: Path):
        self.handle, self.path = handle, path
        self.decoder = json.JSONDecoder(parse_float=JsonNumber, parse_int=JsonNumber,
                                        parse_constant=JsonNumber)
        self.buf, self.pos, self.eof = "", 0, False
        self.line, self.line_pos = 1, 0  # buf[line_pos] is on physical line `line`
        self.column_base = 0  # characters of buf's first line that were dropped
        self.unit = "entry"

    # buffer

    def _fill(self) -> bool:
        """Read one more block; False at the end of the file."""
        if self.eof:
            return False
        try:
            text = self.handle.read(self.BLOCK)
        except UnicodeDecodeError:
            raise not_utf8(self.path) from None
        if not text:
            self.eof = True
            return False
        if self.pos:  # drop what was read, keeping line and column counts right
            self._line_of(self.pos)
            newline = self.buf.rfind("\n", 0, self.pos)
            self.column_base = self.pos - newline - 1 if newline >= 0 \
                else self.column_base + self.pos
            self.buf = self.buf[self.pos:]
            self.line_pos, self.pos = 0, 0
        self.buf += text
        return True

    def _line_of(self, position: int) -> int:
        if position >= self.line_pos:
            self.line += self.buf.count("\n", self.line_pos, position)
            self.line_pos = position
            return self.line
        return self.line - self.buf.count("\n", position, self.line_pos)

    def _error(self, message: str, position: int) -> UserError:
        newline = self.buf.rfind("\n", 0, position)
        column = position - newline if newline >= 0 else self.column_base + position + 1
        return UserError(f"{self.path}: not valid JSON (line {self._line_of(position)}, "
                         f"column {column}: {message})")

    def _peek(self) -> str:
        """The next character after whitespace ('' at the end of the file)."""
        while True:
            self.pos = self._SPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._fill():
                return ""

    def _value(self):
        self._peek()  # raw_decode does not skip whitespace
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                # near the buffer's end it may only be cut off: read on and try again
                certain = exc.pos < len(self.buf) - 16 and not exc.msg.startswith("Unterminated")
                if certain or self.eof:
                    raise self._error(exc.msg, exc.pos) from None
                if len(self.buf) - self.pos > self.MAX_VALUE:
                    raise self._error(f"a value larger than {self.MAX_VALUE >> 20} MiB, or "
                                      f"{exc.msg}", exc.pos) from None
                self._fill()
                continue
            except RecursionError:
                raise UserError(f"{self.path}: not valid JSON (nested too deeply)") from None
            if end == len(self.buf) and self._fill():
                continue  # a number at the buffer's end may be cut off
            self.pos = end
            return value

    def _expect(self, char: str, message: str) -> None:
        if self._peek() != char:
            raise self._error(message, self.pos)
        self.pos += 1

    def _array(self) -> Iterator[tuple[int, object]]:
        """The elements of the array whose '[' was just read."""
        if self._peek() == "]":
            self.pos += 1
            return
        number = 0
        while True:
            if self._peek() == "":
                raise self._error("Expecting value", self.pos)
            number += 1
            yield number, self._value()
            following = self._peek()
            if following == "]":
                self.pos += 1
                return
            if following != ",":
                raise self._error("Expecting ',' delimiter", self.pos)
            self.pos += 1

    def _end(self) -> None:
        if self._peek() != "":
            raise self._error("Extra data", self.pos)

    def _wrapped(self) -> bool:
        while len(self.buf) - self.pos < 4096 and self._fill():
            pass
        return bool(self._WRAPPED.match(self.buf, self.pos))

    def entries(self) -> Iterator[tuple[int, object]]:
        start = self._peek()
        if start == "[":
            self.pos += 1
            yield from self._array()
            self._end()
        elif start == "{" and self._wrapped():
            self.pos = self._WRAPPED.match(self.buf, self.pos).end()
            yield from self._array()
            while self._peek() == ",":  # other keys after the array: read and drop
                self.pos += 1
                self._value()
                self._expect(":", "Expecting ':' delimiter")
                self._value()
            self._expect("}", "Expecting ',' delimiter")
            self._end()
        elif start == "{":
            line = self._line_of(self.pos)
            first = self._value()
            if self._peek() == "":  # one object
                if isinstance(first, dict) and "audio_features" in first:
                    first = first["audio_features"]  # not the first key: read whole
                    if not isinstance(first, list):
                        raise _not_a_list(self.path)
                    yield from enumerate(first, start=1)
                else:
                    yield 1, first
                return
            self.unit = "line"  # JSON Lines: one value per line
            yield line, first
            while self._peek() != "":
                line = self._line_of(self.pos)
                yield line, self._value()
        else:
            raise _not_a_list(self.path)


def not_utf8(path: Path) -> UserError:
    """Which line is not UTF-8: the decoder reads ahead in blocks, so find it again by line."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return UserError(f"{path}: line {number}: not UTF-8 text (save the file as UTF-8)")
    return UserError(f"{path}: not UTF-8 text (save the file as UTF-8)")


def _not_a_list(path: Path) -> UserError:
    return UserError(f'{path}: expected a list of audio-feature objects or {{"audio_features": '
                     '[...]}')


# --- plausibility -----------------------------------------------------------------------------


def plausible_bounds(feature: str, low: float, high: float) -> tuple[float, float]:
    """The interval outside which a value of ``feature`` is implausible (the rule above)."""
    if feature in LOG_SCALE_FEATURES:
        return low / LOG_FACTOR, high * LOG_FACTOR
    width = high - low if high > low else max(abs(high), 1.0)  # one value seen: its size
    return low - RANGE_MARGIN * width, high + RANGE_MARGIN * width


def implausible(values: np.ndarray, features: list[str],
                ranges: dict[str, list[float]] | None) -> np.ndarray:
    """Bool array like ``values``: True where a value is far outside its training range.
    NaN (an absent column) is never implausible; features without a range are not checked."""
    flags = np.zeros(values.shape, dtype=bool)
    for j, feature in enumerate(features):
        if ranges and feature in ranges:
            low, high = plausible_bounds(feature, *ranges[feature])
            column = values[:, j]
            flags[:, j] = (column < low) | (column > high)
    return flags


def _number(value: float) -> str:
    if float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:.4g}"


class PlausibilityCheck:
    """Counts implausible values per column over a file's chunks; rows with one are skipped.

    One line per column at the end (``summary``); a column where most values are
    implausible is a wrong unit, an error for the whole file, checked on the first chunk
    (before anything is written) and on the totals.
    """

    def __init__(self, path: Path, features: list[str], ranges, unit: str = "line"):
        self.path, self.features, self.ranges, self.unit = path, features, ranges, unit
        self.flagged = np.zeros(len(features), dtype=np.int64)
        self.below = np.zeros(len(features), dtype=np.int64)
        self.checked = np.zeros(len(features), dtype=np.int64)
        self.first_positions: list[list[int]] = [[] for _ in features]
        self.chunks = 0

    def skip(self, values: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Bool per row: True for a row with an implausible value (counted)."""
        flags = implausible(values, self.features, self.ranges)
        if not self.ranges:
            return flags.any(axis=1)
        self.checked += np.isfinite(values).sum(axis=0)
        self.flagged += flags.sum(axis=0)
        for j, feature in enumerate(self.features):
            if feature in self.ranges and flags[:, j].any():
                self.below[j] += int((values[flags[:, j], j] < self.ranges[feature][0]).sum())
                room = 3 - len(self.first_positions[j])
                if room > 0:
                    self.first_positions[j].extend(int(p) for p in positions[flags[:, j]][:room])
        self.chunks += 1
        if self.chunks == 1:
            self.check_majority()
        return flags.any(axis=1)

    def _what(self, j: int) -> str:
        feature = self.features[j]
        low, high = self.ranges[feature]
        counts = f"{self.flagged[j]:,} of {self.checked[j]:,} values"
        if feature == "duration_ms" and self.below[j] == self.flagged[j]:
            return f"{feature}: {counts} look like seconds (outside {_number(low)}–{_number(high)} ms)"
        return (f"{feature}: {counts} far outside the training range "
                f"{_number(low)}–{_number(high)}")

    def check_majority(self) -> None:
        for j in np.flatnonzero(self.flagged * 2 > self.checked):
            feature = self.features[j]
            fix = (f": multiply by 1000, or pass --column {feature}={SECONDS_TARGET}"
                   if feature == "duration_ms" and self.below[j] == self.flagged[j]
                   else ": another unit or scale? nothing was predicted")
            raise UserError(f"{self.path}: {self._what(j)}{fix}")

    def summary(self) -> list[str]:
        """One line per column with implausible values."""
        lines = []
        for j in np.flatnonzero(self.flagged):
            first = ", ".join(map(str, self.first_positions[j]))
            lines.append(f"{self._what(j)}; rows skipped (first: {self.unit} {first})")
        return lines
