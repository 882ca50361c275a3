"""Stage merge_genres: add the training label (a genre, or a merged genre group) to each split.

``merge_genres.strategy`` picks the classes: ``none``, the genre itself (114
classes on the real data); ``study``, the genres listed under a class in
taxonomies/study.yaml folded into it (the study's hand-made 114 -> 66 merge);
``learned``, the same with taxonomies/learned.yaml, which stage taxonomy builds
from confusions measured without the test split. The groups live in those files
(dependencies of this stage) rather than in params.yaml: as params they made
200-character cells in `dvc exp show`.

``merge_genres.train_on`` says what the families learn once genres are merged:
``genres`` (the default), the genres themselves, so the labeled splits are those of
strategy none and no family retrains, and data/labeled/fold.json tells evaluate and
publish which class each genre's probability is added to (every family scored higher
so than retrained on the classes: docs/taxonomy.md); ``classes``, the merged classes
(the study's way), every family retrained on them.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd
import yaml

from stages.common import (
    FOLD_JSON,
    GENRE_COLUMN,
    LABEL_COLUMN,
    LABELED_DIR,
    SPLIT_DIR,
    SPLITS,
    Fold,
    UserError,
    cli,
    read_parquet,
    write_json,
    write_parquet,
)
from stages.params import MergeGenresParams, load_section

GROUPS_FILE = Path("taxonomies/study.yaml")
GROUPS_FILES = {"study": GROUPS_FILE, "learned": Path("taxonomies/learned.yaml")}


def read_groups(path: Path = GROUPS_FILE) -> dict[str, list[str]]:
    """The merge groups file: {merged class: [genres]}, each genre under one class only."""
    try:
        groups = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise UserError(f"{path}:{f' line {mark.line + 1}:' if mark else ''} not valid YAML") from None
    if not isinstance(groups, dict):
        raise UserError(f"{path}: must map each merged class to a list of genres")
    owner: dict[str, str] = {}
    for target, sources in groups.items():
        if not isinstance(sources, list) or not all(isinstance(g, str) for g in sources):
            raise UserError(f"{path}: {target}: must be a list of genre names, got {sources!r}")
        for genre in sources:
            if genre in owner and owner[genre] != target:
                raise UserError(f"{path}: genre {genre!r} is listed under two classes: "
                                f"{owner[genre]!r} and {target!r}")
            owner[genre] = target
    return {str(target): list(sources) for target, sources in groups.items()}


def genre_mapping(groups: dict[str, list[str]] | None, genres: set[str],
                  source: Path = GROUPS_FILE) -> dict[str, str]:
    """Map every genre present in the data to its class; ``None``: no merging."""
    mapping = {g: g for g in genres}
    if groups is None:
        return mapping
    unknown = sorted(g for sources in groups.values() for g in sources if g not in genres)
    if unknown:
        raise UserError(f"{source}: names genre(s) not in the data: {', '.join(unknown)}")
    for target, sources in groups.items():
        for genre in sources:
            mapping[genre] = target
    return mapping


def check_sizes(n_genres: int, params: MergeGenresParams) -> None:
    """One clear error when the learned taxonomy cannot have n_groups classes of at most
    max_group_size genres (stage taxonomy learns the nearest it can: used, it would be
    another taxonomy than asked for)."""
    if params.n_groups > n_genres:
        raise UserError(f"params.yaml: merge_genres.n_groups = {params.n_groups}: more than the "
                        f"{n_genres} genres in the data")
    fewest = math.ceil(n_genres / params.max_group_size)
    if params.n_groups < fewest:
        raise UserError(f"params.yaml: merge_genres.n_groups = {params.n_groups} is impossible with "
                        f"merge_genres.max_group_size = {params.max_group_size}: {n_genres} genres "
                        f"need at least {fewest} classes of at most {params.max_group_size}")


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
    parser.add_argument("--groups", type=Path,
                        help="merge groups file (default: the one merge_genres.strategy names)")
    args = parser.parse_args(argv)
    params = load_section("merge_genres")
    merging = params.strategy != "none"
    splits = {name: read_parquet(args.in_dir / f"{name}.parquet") for name in SPLITS}
    genres = set().union(*(set(f[GENRE_COLUMN]) for f in splits.values()))
    if not genres:
        raise UserError(f"{args.in_dir}: the splits hold no rows")
    if params.strategy == "learned" and args.groups is None:
        check_sizes(len(genres), params)
    groups_file = args.groups or GROUPS_FILES.get(params.strategy, GROUPS_FILE)
    groups = read_groups(groups_file) if merging else None
    mapping = genre_mapping(groups, genres, groups_file)
    fold = answer_fold(mapping) if merging and params.train_on == "genres" else None
    learned = genre_mapping(None, genres) if fold else mapping
    for name, frame in add_labels(splits, learned).items():
        write_parquet(args.out_dir / f"{name}.parquet", frame)
    write_json(args.out_dir / "classes.json", class_list(learned))
    write_json(args.out_dir / FOLD_JSON.name, {"fold": fold.to_json() if fold else None})
    merged = len(class_list(mapping))
    if not merging:
        how = "not merged"
    elif fold:
        how = f"learned as genres, answered summed per class of {groups_file}"
    else:
        how = f"merged as in {groups_file}, learned as merged"
    print(f"merge_genres: {len(genres)} genres -> {merged} classes ({how})")


def answer_fold(mapping: dict[str, str]) -> Fold:
    """Genre models answering at the merged classes: the genres in the models' output
    order (class_list of the unmerged mapping), each folded into its class."""
    genres = sorted(mapping)
    return Fold(genres, [mapping[g] for g in genres])


if __name__ == "__main__":
    main()
