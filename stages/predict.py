"""Label tracks with a trained model: top-k genres and their probabilities.

    python -m stages.predict MODEL INPUT.csv [-k 3] [-o OUT.csv]

MODEL is a family name (softmax, mlp, lstm -> models/NAME.keras), genre-classifier
(the published model, models/genre-classifier.keras) or a path to a .keras file
(e.g. one fetched with `dvc artifacts get`). INPUT.csv needs the 15 feature
columns, in any order; other columns are ignored, except track_id, which is passed
through. Rows with a missing or non-numeric feature are reported on stderr and skipped.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from stages.common import (
    FEATURES,
    ID_COLUMN,
    MODELS_DIR,
    PUBLISHED_NAME,
    UserError,
    atomic_path,
    cli,
)
from stages.params import FAMILIES

MAX_REPORTED_ROWS = 20


def model_path(name: str) -> Path:
    known = (*FAMILIES, PUBLISHED_NAME)
    return MODELS_DIR / f"{name}.keras" if name in known else Path(name)


def read_input(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{path}: input file not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable CSV ({str(exc).strip().splitlines()[0]})") from None
    missing = [c for c in FEATURES if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: missing feature column(s) {', '.join(missing)}")
    return frame


def parse_features(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Return (features of usable rows, their positions, one message per skipped row)."""
    values = {}
    for column in FEATURES:
        text = frame[column].str.strip()
        if column == "explicit":
            flags = text.str.lower().map({"true": 1.0, "false": 0.0})
            values[column] = flags.fillna(pd.to_numeric(text, errors="coerce"))
        else:
            values[column] = pd.to_numeric(text, errors="coerce")
    numbers = pd.DataFrame(values)[FEATURES]
    bad = ~np.isfinite(numbers.to_numpy(dtype="float64"))
    problems = []
    for row in np.flatnonzero(bad.any(axis=1)):
        column = FEATURES[int(np.argmax(bad[row]))]
        raw = frame[column].iloc[row]
        what = "missing" if pd.isna(raw) else f"{raw!r} is not a number"
        # +2: 1-based line numbers after the header line
        problems.append(f"line {row + 2}: column {column!r}: {what}; row skipped")
    usable = np.flatnonzero(~bad.any(axis=1))
    return numbers.to_numpy(dtype="float32")[usable], usable, problems


def top_k_table(proba: np.ndarray, classes: list[str], k: int) -> pd.DataFrame:
    k = min(k, proba.shape[1])
    top = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    names = np.asarray(classes)
    table = {}
    for rank in range(k):
        table[f"genre_{rank + 1}"] = names[top[:, rank]]
        table[f"prob_{rank + 1}"] = np.round(np.take_along_axis(proba, top[:, rank:rank + 1], 1)[:, 0], 5)
    return pd.DataFrame(table)


def predict_file(model_name: str, input_path: Path, k: int) -> tuple[pd.DataFrame, list[str]]:
    from stages.model_files import load_model, predict_proba  # noqa: PLC0415
    from stages.tf_setup import quiet_tensorflow  # noqa: PLC0415

    frame = read_input(input_path)
    features, rows, problems = parse_features(frame)
    if len(rows) == 0:
        return pd.DataFrame(), problems
    quiet_tensorflow()
    model, classes = load_model(model_path(model_name))
    table = top_k_table(predict_proba(model, features), classes, k)
    table.insert(0, "line", rows + 2)
    if ID_COLUMN in frame.columns:
        table.insert(0, ID_COLUMN, frame[ID_COLUMN].iloc[rows].to_numpy())
    return table, problems


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stages.predict", description="Label tracks with a trained model.")
    parser.add_argument("model", help="softmax | mlp | lstm | genre-classifier, or a path to a .keras file")
    parser.add_argument("input", type=Path, help="CSV with the 15 feature columns")
    parser.add_argument("-k", type=int, default=3, help="how many genres per track (default 3)")
    parser.add_argument("-o", "--output", type=Path, help="output CSV (default: stdout)")
    args = parser.parse_args(argv)
    if args.k < 1:
        raise UserError(f"-k {args.k}: must be >= 1")
    model_file = model_path(args.model)
    if not model_file.is_file():
        raise UserError(f"{model_file}: model file not found (train it: dvc repro, or get it: dvc pull)")
    table, problems = predict_file(args.model, args.input, args.k)
    for message in problems[:MAX_REPORTED_ROWS]:
        print(f"{args.input}: {message}", file=sys.stderr)
    if len(problems) > MAX_REPORTED_ROWS:
        print(f"{args.input}: ... {len(problems) - MAX_REPORTED_ROWS} more rows skipped",
              file=sys.stderr)
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
