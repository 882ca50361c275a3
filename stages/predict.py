"""Label tracks with a trained model: top-k genres and their probabilities.

    python -m stages.predict MODEL INPUT [-k 3] [-o OUT.csv]

MODEL is a family name (softmax, mlp, lstm -> models/NAME.keras), genre-classifier
(the published model, models/genre-classifier.keras) or a path to a .keras file
(e.g. one fetched with `dvc artifacts get`). The model asks only for the features
it was trained on (all 15, or the 13 audio features with param features=audio).

INPUT is a CSV with those feature columns, in any order (other columns are ignored,
except track_id, which is passed through), or what Spotify's audio-features API
returns: a file starting with `{` or `[` is read as JSON, either
{"audio_features": [...]} or a bare list of objects (a single object also works);
each object's `id` becomes the track_id, other extra fields are ignored. Rows or
entries with a missing or non-numeric feature, and null entries (the API's answer
for an unknown id), are reported on stderr and skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from stages.common import (
    AUDIO_FEATURES,
    FEATURES,
    ID_COLUMN,
    MODELS_DIR,
    PUBLISHED_MODEL,
    PUBLISHED_NAME,
    UserError,
    atomic_path,
    cli,
)
from stages.model_files import family_file
from stages.params import FAMILIES
from stages.ranking import top_k_classes  # the tie rule evaluate counts with

# the MLP on the 13 audio features, trained by stage train_audio whatever `features` says
AUDIO_NAME = "genre-classifier-audio"
AUDIO_MODEL = MODELS_DIR / f"{AUDIO_NAME}.keras"
MAX_REPORTED_ROWS = 20
JSON_ID_FIELD = "id"  # the API's track id, written out as track_id
# Track data, not audio descriptors: the audio-features API never returns them.
NOT_FROM_THE_API = [f for f in FEATURES if f not in AUDIO_FEATURES]


def model_path(name: str) -> Path:
    if name in FAMILIES:
        return family_file(name)
    return {PUBLISHED_NAME: PUBLISHED_MODEL, AUDIO_NAME: AUDIO_MODEL}.get(name, Path(name))


@dataclass
class Records:
    """Input rows as read, before their feature values are checked.

    ``frame`` holds the model's feature columns (text for a CSV, JSON values for
    JSON) and track_id when the input has one; ``positions`` is each row's number
    in the file (CSV line, 1-based JSON entry), for messages and the output.
    """

    frame: pd.DataFrame
    positions: np.ndarray
    unit: str  # "line" or "entry": what ``positions`` count
    item: str  # "column" or "field": what a feature is called in messages
    show: Callable = repr  # how a bad value is quoted in messages
    # (position, message) of records dropped while reading (JSON nulls, non-objects)
    skipped: list[tuple[int, str]] = field(default_factory=list)


def missing_features_error(path: Path, noun: str, missing: list[str],
                           features: list[str]) -> UserError:
    message = f"{path}: missing feature {noun}(s) {', '.join(missing)}"
    # The usual case: audio features from the API fed to a model of all 15.
    if set(features) == set(FEATURES) and set(missing) <= set(NOT_FROM_THE_API):
        message += (f": this model takes all {len(FEATURES)} features; the {AUDIO_NAME} model "
                    f"needs only the {len(AUDIO_FEATURES)} audio features (python -m "
                    f"stages.predict {AUDIO_NAME} FILE, or every family: "
                    "dvc exp run -S features=audio)")
    return UserError(message)


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


def read_csv_records(path: Path, features: list[str]) -> Records:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable CSV ({str(exc).strip().splitlines()[0]})") from None
    missing = [c for c in features if c not in frame.columns]
    if missing:
        raise missing_features_error(path, "column", missing, features)
    keep = [*features, *([ID_COLUMN] if ID_COLUMN in frame.columns else [])]
    # +2: 1-based line numbers after the header line
    return Records(frame[keep], np.arange(len(frame)) + 2, "line", "column")


def json_entries(path: Path) -> list:
    """The list of entries of an audio-features JSON file."""
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: "
                        f"{exc.msg})") from None
    except (UnicodeDecodeError, RecursionError) as exc:
        raise UserError(f"{path}: not valid JSON ({type(exc).__name__})") from None
    if isinstance(data, dict) and "audio_features" in data:
        data = data["audio_features"]  # GET /audio-features?ids=...
    elif isinstance(data, dict):
        data = [data]  # GET /audio-features/{id}: one track's object
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a list of audio-feature objects or "
                        '{"audio_features": [...]}')
    return data


def read_json_records(path: Path, features: list[str]) -> Records:
    entries = json_entries(path)
    skipped, objects, positions = [], [], []
    for number, entry in enumerate(entries, start=1):
        if isinstance(entry, dict):
            objects.append(entry)
            positions.append(number)
        elif entry is None:
            skipped.append((number, f"entry {number}: null (unknown track id?); skipped"))
        else:
            skipped.append((number, f"entry {number}: {json.dumps(entry)[:40]} is not an "
                                    "object; skipped"))
    keys = set().union(*objects) if objects else set()
    missing = [f for f in features if f not in keys]
    if objects and missing:  # no entry has it: a missing column, not bad entries
        raise missing_features_error(path, "field", missing, features)
    frame = pd.DataFrame(objects, columns=[*features, JSON_ID_FIELD])
    frame = frame.rename(columns={JSON_ID_FIELD: ID_COLUMN})
    if JSON_ID_FIELD not in keys:
        frame = frame.drop(columns=[ID_COLUMN])
    return Records(frame, np.asarray(positions, dtype="int64"), "entry", "field",
                   show=lambda value: json.dumps(value, default=str), skipped=skipped)


def read_input(path: Path, features: list[str]) -> Records:
    """The input's records with the model's ``features``; a missing one is an error."""
    if not path.is_file():
        raise UserError(f"{path}: input file not found")
    if is_json(path):
        return read_json_records(path, features)
    return read_csv_records(path, features)


def _text_numbers(values: pd.Series, column: str) -> pd.Series:
    """CSV text -> float; explicit also reads true/false."""
    text = values.str.strip()
    numbers = pd.to_numeric(text, errors="coerce")
    if column == "explicit":
        numbers = text.str.lower().map({"true": 1.0, "false": 0.0}).fillna(numbers)
    return numbers


def _json_numbers(values: pd.Series, column: str) -> pd.Series:
    """JSON values -> float: JSON numbers only (explicit also true/false), else NaN."""
    if values.dtype.kind in "iuf":  # the usual case: every entry has a number
        return values.astype("float64")
    if values.dtype.kind == "b" and column == "explicit":
        return values.astype("float64")
    # bool is an int in Python but not a feature value, except for explicit
    ok = values.map(lambda v: isinstance(v, (int, float))
                    and (column == "explicit" or not isinstance(v, bool)))
    return values.where(ok).astype("float64")


def parse_features(records: Records,
                   features: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Return (features of usable rows, their row indices, one message per skipped record)."""
    frame = records.frame
    convert = _text_numbers if records.unit == "line" else _json_numbers
    numbers = pd.DataFrame({c: convert(frame[c], c) for c in features})
    values = numbers.to_numpy(dtype="float64")
    bad = ~np.isfinite(values)
    problems = list(records.skipped)
    noun = "row" if records.unit == "line" else "entry"
    for row in np.flatnonzero(bad.any(axis=1)):
        column = features[int(np.argmax(bad[row]))]
        raw = frame[column].iloc[row]
        what = "missing" if raw is None or (np.isscalar(raw) and pd.isna(raw)) \
            else f"{records.show(raw)} is not a number"
        position = int(records.positions[row])
        problems.append((position, f"{records.unit} {position}: {records.item} {column!r}: "
                                   f"{what}; {noun} skipped"))
    problems.sort(key=lambda item: item[0])
    usable = np.flatnonzero(~bad.any(axis=1))
    return values[usable].astype("float32"), usable, [message for _, message in problems]


def top_k_table(proba: np.ndarray, classes: list[str], k: int) -> pd.DataFrame:
    k = min(k, proba.shape[1])
    top = top_k_classes(proba, k)
    names = np.asarray(classes)
    table = {}
    for rank in range(k):
        table[f"genre_{rank + 1}"] = names[top[:, rank]]
        table[f"prob_{rank + 1}"] = np.round(np.take_along_axis(proba, top[:, rank:rank + 1], 1)[:, 0], 5)
    return pd.DataFrame(table)


def capped(problems: list[str], unit: str) -> list[str]:
    """The first MAX_REPORTED_ROWS messages, then how many more were skipped."""
    if len(problems) <= MAX_REPORTED_ROWS:
        return problems
    more = len(problems) - MAX_REPORTED_ROWS
    return [*problems[:MAX_REPORTED_ROWS],
            f"... {more} more {'rows' if unit == 'line' else 'entries'} skipped"]


def predict_file(model_name: str, input_path: Path, k: int) -> tuple[pd.DataFrame, list[str]]:
    """(top-k table of the usable records, messages about the skipped ones, capped)."""
    from stages.model_files import load_model, predict_proba, read_features  # noqa: PLC0415
    from stages.tf_setup import quiet_tensorflow  # noqa: PLC0415

    # the feature list is read from the model's zip: input errors need no TensorFlow
    features = read_features(model_path(model_name))
    records = read_input(input_path, features)
    x, rows, problems = parse_features(records, features)
    problems = capped(problems, records.unit)
    if len(rows) == 0:
        return pd.DataFrame(), problems
    quiet_tensorflow()
    model, classes, _ = load_model(model_path(model_name))
    table = top_k_table(predict_proba(model, x), classes, k)
    table.insert(0, records.unit, records.positions[rows])
    if ID_COLUMN in records.frame.columns:
        table.insert(0, ID_COLUMN, records.frame[ID_COLUMN].iloc[rows].to_numpy())
    return table, problems


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stages.predict", description="Label tracks with a trained model.")
    parser.add_argument("model", help="softmax | mlp | lstm | forest | boosting | genre-classifier | "
                        "genre-classifier-audio, "
                        "or a path to a model file (.keras, or .npz for a tree family)")
    parser.add_argument("input", type=Path, help="CSV with the model's feature columns, "
                        "or the JSON of Spotify's audio-features API")
    parser.add_argument("-k", type=int, default=3, help="how many genres per track (default 3)")
    parser.add_argument("-o", "--output", type=Path, help="output CSV (default: stdout)")
    args = parser.parse_args(argv)
    if args.k < 1:
        raise UserError(f"-k {args.k}: must be >= 1")
    model_file = model_path(args.model)
    if not model_file.is_file():
        raise UserError(f"{model_file}: model file not found (train it: dvc repro, or get it: dvc pull)")
    table, problems = predict_file(args.model, args.input, args.k)
    for message in problems:
        print(f"{args.input}: {message}", file=sys.stderr)
    if table.empty:
        raise UserError(f"{args.input}: no row could be predicted")
    if args.output:
        with atomic_path(args.output, suffix=".csv") as tmp:
            table.to_csv(tmp, index=False)
        print(f"predict: {len(table)} rows -> {args.output}", file=sys.stderr)
    else:
        try:
            table.to_csv(sys.stdout, index=False)
        except BrokenPipeError:  # e.g. piped into `head`: stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    main()
