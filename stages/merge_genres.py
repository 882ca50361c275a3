"""Stage merge_genres: add the training label (a genre, or a merged genre group) to each split.

With ``merge_genres.enabled: false`` the label is the genre itself (114 classes on
the real data); with ``true`` the genres listed under a target in
``merge_genres.groups`` are folded into it (the study's 114 -> 66 merge).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from stages.common import (
    GENRE_COLUMN,
    LABEL_COLUMN,
    LABELED_DIR,
    SPLIT_DIR,
    SPLITS,
    UserError,
    cli,
    read_parquet,
    write_json,
    write_parquet,
)
from stages.params import MergeGenresParams, load_section


def genre_mapping(params: MergeGenresParams, genres: set[str]) -> dict[str, str]:
    """Map every genre present in the data to its class; reject genres the data lacks."""
    mapping = {g: g for g in genres}
    if not params.enabled:
        return mapping
    unknown = sorted(
        g for sources in params.groups.values() for g in sources if g not in genres
    )
    if unknown:
        raise UserError(
            f"params.yaml: merge_genres.groups names genre(s) not in the data: {', '.join(unknown)}"
        )
    for target, sources in params.groups.items():
        for genre in sources:
            mapping[genre] = target
    return mapping


def add_labels(splits: dict[str, pd.DataFrame], mapping: dict[str, str]) -> dict[str, pd.DataFrame]:
    out = {}
    for name, frame in splits.items():
        labeled = frame.copy()
        labeled[LABEL_COLUMN] = labeled[GENRE_COLUMN].map(mapping)
        out[name] = labeled
    return out


def class_list(mapping: dict[str, str]) -> list[str]:
    return sorted(set(mapping.values()))


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-dir", type=Path, default=SPLIT_DIR)
    parser.add_argument("--out-dir", type=Path, default=LABELED_DIR)
    args = parser.parse_args(argv)
    params = load_section("merge_genres")
    splits = {name: read_parquet(args.in_dir / f"{name}.parquet") for name in SPLITS}
    genres = set().union(*(set(f[GENRE_COLUMN]) for f in splits.values()))
    if not genres:
        raise UserError(f"{args.in_dir}: the splits hold no rows")
    mapping = genre_mapping(params, genres)
    for name, frame in add_labels(splits, mapping).items():
        write_parquet(args.out_dir / f"{name}.parquet", frame)
    classes = class_list(mapping)
    write_json(args.out_dir / "classes.json", classes)
    print(f"merge_genres: {len(genres)} genres -> {len(classes)} classes "
          f"({'merged' if params.enabled else 'not merged'})")


if __name__ == "__main__":
    main()
