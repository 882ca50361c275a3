"""Stage split: clean the raw CSV and split it into train/val/test parquet files.

Cleaning follows the original study: drop the unnamed index column (rows are
sorted by genre, so it leaks the label), rows with any NA and exact duplicates.
``recording`` (default) keeps every recording in one split: rows linked by a shared
track_id or by identical values of all 15 features, transitively (the same recording
is published under several track_ids). ``group`` keeps every track_id in one split
(feature twins under other track_ids can still land in train and test); ``random``
is the study's row split, kept for comparison (identical tracks can land in train
and test).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
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
# what _three_way splits under each strategy, for its error message
UNITS = {"recording": "recordings", "group": "track_ids", "random": "rows"}


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
        raise UserError(f"split: need at least 3 {UNITS[params.strategy]} "
                        f"to make train/val/test, got {len(items)}")
    rest, test, rest_labels, _ = _two_way(items, labels, params.test_size, params.seed)
    train, val, _, _ = _two_way(rest, rest_labels, params.val_size, params.seed)
    return {"train": train, "val": val, "test": test}


def feature_vector_ids(features: pd.DataFrame) -> np.ndarray:
    """One integer per row, equal exactly when all 15 feature values are equal."""
    # exact grouping, not a hash: two different vectors must never be merged
    return features[FEATURES].groupby(FEATURES, sort=False, dropna=False).ngroup().to_numpy()


def recording_ids(frame: pd.DataFrame) -> np.ndarray:
    """Per row, the position of the first row of its recording.

    A recording is a connected component of the graph linking each row to its
    track_id and to its 15-feature vector, so rows sharing either (directly or
    through a chain) are one recording. Numbering by first row makes the ids
    independent of how the component algorithm labels its components.
    """
    n = len(frame)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    track, _ = pd.factorize(frame[ID_COLUMN])
    vector = feature_vector_ids(frame)
    # nodes: rows 0..n-1, then track_ids, then feature vectors
    rows = np.arange(n)
    targets = np.concatenate([n + track, n + track.max() + 1 + vector])
    size = n + track.max() + 1 + vector.max() + 1
    graph = coo_matrix((np.ones(2 * n, dtype=np.int8), (np.tile(rows, 2), targets)),
                       shape=(size, size))
    _, component = connected_components(graph, directed=False)
    _, first_row, inverse = np.unique(component[:n], return_index=True, return_inverse=True)
    return first_row[inverse].astype(np.int64)


def _most_frequent(keys: np.ndarray, genres: pd.Series) -> pd.Series:
    """Per key (sorted), its most frequent genre; ties go to the alphabetically first."""
    counts = (pd.DataFrame({"key": keys, "genre": genres.to_numpy()})
              .value_counts().rename("n").reset_index())
    counts = counts.sort_values(["key", "n", "genre"], ascending=[True, False, True],
                                kind="stable")
    return counts.drop_duplicates("key").set_index("key")["genre"]


def _split_groups(frame: pd.DataFrame, keys: pd.Series, primary: pd.Series,
                  params: SplitParams) -> dict[str, pd.DataFrame]:
    """Split the groups (primary's sorted index, stratified by its values); every row
    follows its group (keys: the group of each row)."""
    parts = _three_way(primary.index.to_numpy(), primary.to_numpy(), params)
    out = {}
    for name, members in parts.items():
        order = pd.Series(np.arange(len(members)), index=members)
        inside = keys.isin(members).to_numpy()
        rows = frame[inside]
        # rows of one group stay together, groups in the shuffled order from the split
        rank = order.loc[keys[inside]].to_numpy()
        rows = rows.iloc[np.argsort(rank, kind="stable")]
        out[name] = rows.reset_index(drop=True)
    return out


def assign_splits(frame: pd.DataFrame, params: SplitParams) -> dict[str, pd.DataFrame]:
    """Return the three splits; same frame and params give the same rows in the same order."""
    if params.strategy == "random":
        positions = np.arange(len(frame))
        parts = _three_way(positions, frame[GENRE_COLUMN].to_numpy(), params)
        return {name: frame.iloc[idx].reset_index(drop=True) for name, idx in parts.items()}

    if params.strategy == "group":
        # groups are track_ids; primary genre: a track's alphabetically first one
        keys = frame[ID_COLUMN]
        primary = frame.groupby(ID_COLUMN, sort=True)[GENRE_COLUMN].min()
    else:
        # recording: groups are recordings; primary genre: the most frequent one
        keys = pd.Series(recording_ids(frame), index=frame.index)
        primary = _most_frequent(keys.to_numpy(), frame[GENRE_COLUMN])
    return _split_groups(frame, keys, primary, params)


def _shared_between_splits(sets: dict[str, set]) -> dict[str, int]:
    shared = {
        "train_val": len(sets["train"] & sets["val"]),
        "train_test": len(sets["train"] & sets["test"]),
        "val_test": len(sets["val"] & sets["test"]),
    }
    shared["total"] = sum(shared.values())
    return shared


def split_report(counts: dict, frame: pd.DataFrame, splits: dict[str, pd.DataFrame],
                 params: SplitParams) -> dict:
    rows_per_track = frame.groupby(ID_COLUMN).size()
    rows_per_recording = pd.Series(recording_ids(frame)).value_counts()
    report = {
        "strategy": params.strategy,
        "seed": params.seed,
        "cleaning": counts,
        # track_ids that occur in more than one row (nearly always under several genres)
        "repeated_track_ids": int((rows_per_track > 1).sum()),
        "distinct_track_ids": int(len(rows_per_track)),
        "rows_repeating_a_track_id": int(len(frame) - len(rows_per_track)),
        "genres": int(frame[GENRE_COLUMN].nunique()),
        # recordings: rows linked by a shared track_id or identical 15 features
        "recording_groups": int(len(rows_per_recording)),
        "rows_in_multi_row_recordings": int(rows_per_recording[rows_per_recording > 1].sum()),
        "largest_recording_rows": int(rows_per_recording.max()) if len(rows_per_recording) else 0,
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
    report["shared_track_ids"] = _shared_between_splits(
        {name: set(splits[name][ID_COLUMN]) for name in SPLITS})
    # number the vectors over all splits at once, so equal vectors get equal ids
    vectors = feature_vector_ids(pd.concat([splits[name][FEATURES] for name in SPLITS]))
    bounds = np.cumsum([0, *(len(splits[name]) for name in SPLITS)])
    report["shared_feature_vectors"] = _shared_between_splits(
        {name: set(vectors[bounds[i]:bounds[i + 1]].tolist()) for i, name in enumerate(SPLITS)})
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
          f"shared track_ids {report['shared_track_ids']['total']}, "
          f"shared feature vectors {report['shared_feature_vectors']['total']}")


if __name__ == "__main__":
    main()
