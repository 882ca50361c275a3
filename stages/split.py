"""Stage split: clean the raw CSV and split it into train/val/test parquet files.

Cleaning follows the original study: drop the unnamed index column (rows are
sorted by genre, so it leaks the label), rows with any NA and exact duplicates.
``group`` (default) keeps every track_id in one split; ``random`` is the study's
row split, kept for comparison (identical tracks can land in train and test).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from stages.common import (
    FEATURES,
    GENRE_COLUMN,
    ID_COLUMN,
    INDEX_COLUMN,
    RAW_CSV,
    REPORTS_DIR,
    SPLIT_DIR,
    SPLITS,
    UserError,
    cli,
    write_json,
    write_parquet,
)
from stages.params import SplitParams, load_section

OUTPUT_COLUMNS = [ID_COLUMN, *FEATURES, GENRE_COLUMN]


def read_raw(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise UserError(f"{path}: file not found (run: dvc repro fetch)")
    return pd.read_csv(path, low_memory=False)


def clean(raw: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Drop the leaking index column, NA rows and exact duplicates; count each step."""
    frame = raw.drop(columns=[INDEX_COLUMN], errors="ignore")
    counts = {"rows_in": int(len(frame))}
    frame = frame.dropna()
    counts["dropped_na"] = counts["rows_in"] - int(len(frame))
    before = len(frame)
    frame = frame.drop_duplicates()
    counts["dropped_duplicates"] = before - int(len(frame))
    counts["rows_clean"] = int(len(frame))
    frame = frame.reset_index(drop=True)
    frame["explicit"] = _as_int_flag(frame["explicit"])
    return frame[OUTPUT_COLUMNS], counts


def _as_int_flag(column: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
        return column.astype("int64")
    text = column.astype(str).str.strip().str.lower()
    return text.isin(["true", "1", "1.0"]).astype("int64")


def _stratify_or_none(labels: np.ndarray) -> np.ndarray | None:
    # train_test_split needs >= 2 members per class to stratify
    _, counts = np.unique(labels, return_counts=True)
    return labels if counts.min() >= 2 else None


def _two_way(items: np.ndarray, labels: np.ndarray, size: float, seed: int):
    try:
        return train_test_split(
            items, labels, test_size=size, random_state=seed,
            stratify=_stratify_or_none(labels),
        )
    except ValueError:
        # too few items per class for the requested fraction: fall back to unstratified
        return train_test_split(items, labels, test_size=size, random_state=seed)


def _three_way(items, labels, params: SplitParams):
    if len(items) < 3:
        raise UserError(f"split: need at least 3 {'track_ids' if params.strategy == 'group' else 'rows'} "
                        f"to make train/val/test, got {len(items)}")
    rest, test, rest_labels, _ = _two_way(items, labels, params.test_size, params.seed)
    train, val, _, _ = _two_way(rest, rest_labels, params.val_size, params.seed)
    return {"train": train, "val": val, "test": test}


def assign_splits(frame: pd.DataFrame, params: SplitParams) -> dict[str, pd.DataFrame]:
    """Return the three splits; same frame and params give the same rows in the same order."""
    if params.strategy == "random":
        positions = np.arange(len(frame))
        parts = _three_way(positions, frame[GENRE_COLUMN].to_numpy(), params)
        return {name: frame.iloc[idx].reset_index(drop=True) for name, idx in parts.items()}

    # group: split unique track_ids, stratified by each track's primary genre (its
    # alphabetically first one), then let every row follow its track_id.
    primary = frame.groupby(ID_COLUMN, sort=True)[GENRE_COLUMN].min()
    parts = _three_way(primary.index.to_numpy(), primary.to_numpy(), params)
    out = {}
    for name, ids in parts.items():
        order = pd.Series(np.arange(len(ids)), index=ids)
        rows = frame[frame[ID_COLUMN].isin(ids)]
        # rows of one track stay together, tracks in the shuffled order from the split
        rank = order.loc[rows[ID_COLUMN]].to_numpy()
        rows = rows.iloc[np.argsort(rank, kind="stable")]
        out[name] = rows.reset_index(drop=True)
    return out


def split_report(counts: dict, frame: pd.DataFrame, splits: dict[str, pd.DataFrame],
                 params: SplitParams) -> dict:
    rows_per_track = frame.groupby(ID_COLUMN).size()
    report = {
        "strategy": params.strategy,
        "seed": params.seed,
        "cleaning": counts,
        # track_ids that occur in more than one row (nearly always under several genres)
        "repeated_track_ids": int((rows_per_track > 1).sum()),
        "distinct_track_ids": int(len(rows_per_track)),
        "rows_repeating_a_track_id": int(len(frame) - len(rows_per_track)),
        "genres": int(frame[GENRE_COLUMN].nunique()),
        "splits": {},
    }
    for name in SPLITS:
        part = splits[name]
        per_genre = part[GENRE_COLUMN].value_counts()
        report["splits"][name] = {
            "rows": int(len(part)),
            "share": round(len(part) / max(len(frame), 1), 4),
            "genres": int(per_genre.size),
            "min_rows_per_genre": int(per_genre.min()) if len(per_genre) else 0,
            "max_rows_per_genre": int(per_genre.max()) if len(per_genre) else 0,
        }
    id_sets = {name: set(splits[name][ID_COLUMN]) for name in SPLITS}
    shared = {
        "train_val": len(id_sets["train"] & id_sets["val"]),
        "train_test": len(id_sets["train"] & id_sets["test"]),
        "val_test": len(id_sets["val"] & id_sets["test"]),
    }
    shared["total"] = sum(shared.values())
    report["shared_track_ids"] = shared
    return report


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, default=RAW_CSV)
    parser.add_argument("--out-dir", type=Path, default=SPLIT_DIR)
    parser.add_argument("--report", type=Path, default=REPORTS_DIR / "data.json")
    args = parser.parse_args(argv)
    params = load_section("split")
    frame, counts = clean(read_raw(args.raw))
    splits = assign_splits(frame, params)
    for name in SPLITS:
        write_parquet(args.out_dir / f"{name}.parquet", splits[name])
    report = split_report(counts, frame, splits, params)
    write_json(args.report, report)
    sizes = ", ".join(f"{n} {report['splits'][n]['rows']}" for n in SPLITS)
    print(f"split ({params.strategy}): {counts['rows_clean']} clean rows -> {sizes}; "
          f"shared track_ids {report['shared_track_ids']['total']}")


if __name__ == "__main__":
    main()
