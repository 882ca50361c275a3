"""Stage taxonomy: a genre taxonomy learned from a quick model's confusions, without the test split.

A probe model (a small random forest) predicts every train and val row out of
fold (folds by recording, so a row is never predicted by a model that saw its
twin). Starting from one class per genre, the pair of classes with the most
mutual confusions (rows of one predicted as the other, the top-1 accuracy a
merge gains) is merged, provided the result holds at most
``merge_genres.max_group_size`` genres; after each merge the probe's
predictions are re-read at the coarser level (probabilities summed per class).
Merging goes on down to the fewest classes the size cap allows, so one run
gives the whole hierarchy: the taxonomy at any class count is a prefix of it.

Outputs: taxonomies/learned.yaml (the classes at ``merge_genres.n_groups``, in
the format of taxonomies/study.yaml, with each class's confusion share as a
comment; stage merge_genres reads it when ``merge_genres.strategy: learned``)
and reports/taxonomy.json (every merge step, for the accuracy-vs-classes curve).
The test split is never read.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from stages.common import (
    FEATURES,
    GENRE_COLUMN,
    LABEL_COLUMN,
    REPORTS_DIR,
    SPLIT_DIR,
    UserError,
    atomic_path,
    cli,
    read_parquet,
    write_json,
)
from stages.params import MergeGenresParams, load_section

LEARNED_FILE = Path("taxonomies/learned.yaml")
MERGES_REPORT = REPORTS_DIR / "taxonomy.json"
PROBE_SPLITS = ("train", "val")  # never test: the taxonomy must not see the rows it is scored on
PROBE_TREES = 60  # per fold: enough for stable confusion counts, ~1 minute on 2 cores
PROBE_FOLDS = 3
PROBE_LEAF = 2
# Rows per genre the probe fits on, at most (a seeded sample beyond): the probe only has to
# tell which genres are confused, and without a cap its forest grows n log n with the rows
# (the first memory wall of bench.scale). Today's data has at most 1,000 per genre in all,
# so the cap leaves it untouched.
PROBE_ROWS_PER_GENRE = 1_000
NAME_MEMBERS = 4  # a merged class is named after its genres, up to this many


def usable_params(n_genres: int, params: MergeGenresParams) -> MergeGenresParams:
    """The params to learn with: n_groups moved into the reachable range. The stage does
    not read merge_genres.strategy, so switching it does not re-run the stage (a dataset
    with few genres must not fail a default `dvc repro` either); with strategy learned,
    merge_genres refuses an n_groups that had to be moved (merge_genres.check_sizes)."""
    fewest = math.ceil(n_genres / params.max_group_size)
    return params.model_copy(update={"n_groups": min(max(params.n_groups, fewest), n_genres)})


def recording_folds(recordings: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Per row, its fold: whole recordings are dealt round-robin in a seeded order."""
    unique, inverse = np.unique(recordings, return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = np.empty(len(unique), dtype=np.int64)
    fold_of[order] = np.arange(len(unique)) % folds
    return fold_of[inverse]


def out_of_fold_proba(x: np.ndarray, y: np.ndarray, fold: np.ndarray, n_classes: int,
                      seed: int, trees: int = PROBE_TREES, n_jobs: int = 2) -> np.ndarray:
    """Each row's class probabilities from a forest fitted on the other folds."""
    from sklearn.ensemble import RandomForestClassifier  # noqa: PLC0415

    proba = np.zeros((len(y), n_classes), dtype=np.float64)
    for k in np.unique(fold):
        held = fold == k
        forest = RandomForestClassifier(n_estimators=trees, max_features="sqrt",
                                        min_samples_leaf=PROBE_LEAF, random_state=seed + int(k),
                                        n_jobs=n_jobs)
        forest.fit(x[~held], y[~held])
        forest.n_jobs = 1  # threads would sum the trees in varying order: not reproducible
        proba[np.ix_(held, forest.classes_)] = forest.predict_proba(x[held])
    return proba


def greedy_merges(proba: np.ndarray, y: np.ndarray, max_group_size: int,
                  min_groups: int = 1) -> list[dict]:
    """Merge the most mutually confused pair of classes, repeatedly, under the size cap.

    ``proba`` (n, G) holds out-of-fold probabilities over the G genres, ``y`` the
    true genre indices. Returns one entry per merge: the two classes merged (as
    sorted genre index lists), the rows that merge turns right and the number of
    classes after it. Stops at ``min_groups`` classes or when no pair fits the cap.
    Ties go to the pair whose classes come first (by their smallest genre index),
    so the result depends on nothing but the inputs.
    """
    n_genres = proba.shape[1]
    members = [[g] for g in range(n_genres)]  # class -> genre indices; list order = class order
    class_proba = proba.copy()
    class_of_row = y.copy()
    merges = []
    while len(members) > max(min_groups, 1):
        g = len(members)
        predicted = class_proba.argmax(axis=1)
        confusion = np.bincount(class_of_row * g + predicted, minlength=g * g).reshape(g, g)
        mutual = np.triu(confusion + confusion.T, k=1).astype(np.float64)
        sizes = np.array([len(m) for m in members])
        fits = np.triu(sizes[:, None] + sizes[None, :] <= max_group_size, k=1)
        if not fits.any():
            break
        mutual[~fits] = -1.0
        a, b = np.unravel_index(int(np.argmax(mutual)), mutual.shape)  # first max: a < b
        merges.append({"merged": [list(members[a]), list(members[b])],
                       "rows_gained": int(mutual[a, b]), "classes_after": g - 1})
        members[a] = sorted(members[a] + members[b])
        del members[b]
        class_proba[:, a] += class_proba[:, b]
        class_proba = np.delete(class_proba, b, axis=1)
        class_of_row = np.where(class_of_row == b, a, class_of_row)
        class_of_row = np.where(class_of_row > b, class_of_row - 1, class_of_row)
    return merges


def groups_after(merges: list[dict], n_genres: int, n_classes: int) -> list[list[int]]:
    """The classes (genre index lists, sorted) once the hierarchy is cut at ``n_classes``."""
    members = [[g] for g in range(n_genres)]
    for step in merges:
        if len(members) <= n_classes:
            break
        first, second = step["merged"]
        members = [m for m in members if m != first and m != second] + [sorted(first + second)]
    if len(members) != n_classes:
        raise UserError(f"the learned hierarchy stops at {len(members)} classes, above "
                        f"merge_genres.n_groups = {n_classes}: no pair of classes fits "
                        "merge_genres.max_group_size (raise it or n_groups)")
    return sorted(members)


def class_name(genres: list[str]) -> str:
    """A merged class's name: its genres (alphabetically); past NAME_MEMBERS, the first
    three and how many more."""
    names = sorted(genres)
    if len(names) <= NAME_MEMBERS:
        return "/".join(names)
    return "/".join(names[:NAME_MEMBERS - 1]) + f"/+{len(names) - NAME_MEMBERS + 1}"


def confusion_share(proba: np.ndarray, y: np.ndarray, group: list[int]) -> float:
    """Share of the group's rows that the probe predicted as another genre of the group."""
    rows = np.isin(y, group)
    if not rows.any():
        return 0.0
    predicted = proba[rows].argmax(axis=1)
    return float(np.mean(np.isin(predicted, group) & (predicted != y[rows])))


def taxonomy_yaml(groups: list[list[int]], genres: list[str], shares: list[float],
                  params: MergeGenresParams) -> str:
    """taxonomies/learned.yaml: study.yaml's format, merged classes only, largest first."""
    lines = [
        "# Learned by stage `taxonomy` (stages/taxonomy.py); `dvc repro` rewrites it, do not edit.",
        f"# {len(groups)} classes (merge_genres.n_groups) from {len(genres)} genres, at most "
        f"{params.max_group_size} genres per class (merge_genres.max_group_size),",
        "# merged where a forest's out-of-fold predictions on train+val confuse them most.",
        "# Each key is a class; its list holds its genres; genres not listed stay their own class.",
        "# The comment: share of the class's train+val rows the probe model put on another",
        "# genre of the same class (the confusion the merge absorbs).",
    ]
    merged = [(g, s) for g, s in zip(groups, shares) if len(g) > 1]
    merged.sort(key=lambda item: (-len(item[0]), item[0]))
    for group, share in merged:
        names = sorted(genres[i] for i in group)
        lines.append(f"{json.dumps(class_name(names))}:  # {share:.1%} confused within")
        lines.append(f"  [{', '.join(json.dumps(n) for n in names)}]")
    return "\n".join(lines) + "\n"


def capped_per_genre(frame: pd.DataFrame, cap: int, seed: int) -> pd.DataFrame:
    """At most ``cap`` rows of each genre: a seeded sample of a genre that has more, the
    rest in their order (a frame within the cap comes back as it is)."""
    sizes = frame[GENRE_COLUMN].value_counts()
    if sizes.empty or sizes.max() <= cap:
        return frame
    order = np.random.default_rng(seed).permutation(len(frame))
    shuffled = frame.iloc[order]
    kept = np.sort(order[shuffled.groupby(GENRE_COLUMN, sort=False).cumcount().to_numpy() < cap])
    return frame.iloc[kept].reset_index(drop=True)


def learn(frames: list[pd.DataFrame], params: MergeGenresParams, seed: int,
          rows_per_genre: int = PROBE_ROWS_PER_GENRE) -> dict:
    """The merge hierarchy and the taxonomy at n_groups, from the train and val frames (at
    most ``rows_per_genre`` rows of each genre)."""
    from stages.split import recording_ids  # noqa: PLC0415

    frame = capped_per_genre(pd.concat(frames, ignore_index=True), rows_per_genre, seed)
    genres = sorted(frame[GENRE_COLUMN].unique())
    if not genres:
        raise UserError("the train and val splits hold no rows")
    params = usable_params(len(genres), params)
    y = frame[GENRE_COLUMN].map({g: i for i, g in enumerate(genres)}).to_numpy(np.int64)
    fold = recording_folds(recording_ids(frame), PROBE_FOLDS, seed)
    proba = out_of_fold_proba(frame[FEATURES].to_numpy(np.float32), y, fold, len(genres), seed)
    min_groups = math.ceil(len(genres) / params.max_group_size)
    merges = greedy_merges(proba, y, params.max_group_size, min_groups)
    groups = groups_after(merges, len(genres), params.n_groups)
    return {
        "genres": genres,
        "params": params,
        "probe_accuracy": round(float(np.mean(proba.argmax(axis=1) == y)), 5),
        "merges": merges,
        "groups": groups,
        "shares": [round(confusion_share(proba, y, g), 4) for g in groups],
    }


# --- accuracy against the number of classes (stage publish draws it) ----------------------

CURVE_LEVELS = (114, 100, 90, 80, 66, 50, 40, 30, 20, 10)


def learned_mappings(report: dict, levels=CURVE_LEVELS) -> dict[int, dict[str, str]]:
    """{classes: {genre: class}} for each level the hierarchy in reports/taxonomy.json reaches."""
    genres = report["genres"]
    fewest = min([len(genres)] + [m["classes_after"] for m in report["merges"]])
    merges = [{"merged": [[genres.index(g) for g in side] for side in m["merged"]]}
              for m in report["merges"]]
    n = len(genres)
    # the fixed levels on the real data (114 genres); every level on a small dataset
    wanted = {n, *(level for level in levels if level < n)} if n > 12 else set(range(1, n + 1))
    out = {}
    for level in sorted(wanted, reverse=True):
        if level < fewest:
            continue
        groups = groups_after(merges, len(genres), level)
        out[level] = {genres[i]: class_name([genres[j] for j in group])
                      for group in groups for i in group}
    return out


def class_genres(test: pd.DataFrame) -> dict[str, set]:
    """{class: the genres its test rows carry}: what a model's (possibly merged) class holds."""
    return test.groupby(LABEL_COLUMN)[GENRE_COLUMN].agg(set).to_dict()


def coarse_fold(classes: list[str], mapping: dict[str, str], genres_of: dict[str, set]
                ) -> tuple[dict[str, int], np.ndarray] | None:
    """How a model's classes fold as ``mapping`` ({genre: coarse class}) says: (coarse
    class -> column, a 0/1 matrix (len(classes), coarse classes)), or None where a class
    (its genres: ``genres_of``, see class_genres) would fall in two coarse classes or in
    none: the taxonomies don't nest."""
    coarse_names = sorted(set(mapping.values()))
    index = {name: i for i, name in enumerate(coarse_names)}
    fold = np.zeros((len(classes), len(coarse_names)))
    for c, name in enumerate(classes):
        targets = {mapping.get(g, g) for g in genres_of.get(name, {name})}
        if len(targets) != 1 or next(iter(targets)) not in index:
            return None
        fold[c, index[targets.pop()]] = 1.0
    return index, fold


def coarse_labels(frame: pd.DataFrame, mapping: dict[str, str], index: dict[str, int]
                  ) -> np.ndarray | None:
    """Each row's coarse class (a column of coarse_fold), None if a genre has none."""
    actual = frame[GENRE_COLUMN].map(lambda g: index.get(mapping.get(g, g), -1)).to_numpy()
    return None if (actual < 0).any() else actual


def coarse_scores(proba: np.ndarray, test: pd.DataFrame, classes: list[str],
                  mapping: dict[str, str], genres_of: dict[str, set] | None = None) -> dict | None:
    """Accuracy, macro-F1 and chance once the model's classes are folded as ``mapping`` says.

    ``proba`` (n, classes) holds the model's test probabilities; each of its classes
    (a genre or a merged class; its genres read from the test rows' genre and label
    columns) must fall inside one coarse class, else the taxonomies don't nest and the
    result is None. A coarse class's probability is the sum of its members'.
    """
    from sklearn.metrics import f1_score  # noqa: PLC0415

    folded = coarse_fold(classes, mapping,
                         class_genres(test) if genres_of is None else genres_of)
    if folded is None:
        return None
    index, fold = folded
    actual = coarse_labels(test, mapping, index)
    if actual is None:
        return None
    predicted = (proba @ fold).argmax(axis=1)
    present = np.unique(actual)
    return {
        "classes": len(index),
        "accuracy": round(float(np.mean(predicted == actual)), 5),
        "macro_f1": round(float(f1_score(actual, predicted, labels=present, average="macro",
                                         zero_division=0)), 5),
        "chance": round(float(np.bincount(actual).max() / len(actual)), 5),
    }


def accuracy_curves(proba: np.ndarray, test: pd.DataFrame, classes: list[str], report: dict,
                    study: dict[str, str] | None) -> dict[str, pd.DataFrame]:
    """{learned: one row per level the model's classes nest in, study: its one point
    (none where the study's merge doesn't fit the data)}."""
    columns = ["classes", "accuracy", "macro_f1", "chance"]
    genres_of = class_genres(test)  # once, not per level
    curves = {}
    for name, mappings in (("learned", list(learned_mappings(report).values())),
                           ("study", [study] if study else [])):
        scored = (coarse_scores(proba, test, classes, m, genres_of) for m in mappings)
        rows = [r for r in scored if r]
        curves[name] = pd.DataFrame(rows, columns=columns)
    return curves


# --- answers at a coarser level (predict --level) ------------------------------------------

DEFAULT_GROUP_LEVEL = 10  # the group predict names beside the top genres


def hierarchy_levels(hierarchy: dict) -> tuple[int, int]:
    """(fewest, most) classes the hierarchy {genres, merges} can be cut at."""
    n = len(hierarchy["genres"])
    return min([n] + [m["classes_after"] for m in hierarchy["merges"]]), n


def level_fold(hierarchy: dict, classes: list[str], level: int) -> tuple[list[str], np.ndarray]:
    """How a model's class probabilities fold into the hierarchy's ``level`` classes:
    (the coarse class names, a 0/1 matrix (len(classes), len(names))), so that
    ``proba @ matrix`` sums each coarse class's members. The model's classes are genres
    of the hierarchy, or classes of the learned taxonomy at a finer level."""
    fewest, most = hierarchy_levels(hierarchy)
    if not fewest <= level <= most:
        raise UserError(f"--level {level}: the model's genre hierarchy has {fewest} to {most} "
                        "classes")
    genres = hierarchy["genres"]
    merges = [{"merged": [[genres.index(g) for g in side] for side in m["merged"]]}
              for m in hierarchy["merges"]]

    def cut(n: int) -> list[list[str]]:
        return [[genres[i] for i in group] for group in groups_after(merges, len(genres), n)]

    members = {g: [g] for g in genres}
    if not set(classes) <= set(genres):  # a model trained on learned classes
        members = {class_name(group): group for group in cut(len(classes))}
    unknown = [c for c in classes if c not in members]
    if unknown:
        raise UserError(f"--level: the model's classes are not from its genre hierarchy "
                        f"({', '.join(unknown[:3])})")
    if level > len(classes):
        raise UserError(f"--level {level}: more than the model's {len(classes)} classes")
    coarse = cut(level)
    names = [class_name(group) for group in coarse]
    owner = {g: i for i, group in enumerate(coarse) for g in group}
    fold = np.zeros((len(classes), len(names)))
    for c, name in enumerate(classes):
        targets = {owner[g] for g in members[name]}
        if len(targets) != 1:
            raise UserError(f"--level {level}: the model's class {name!r} is split between "
                            "classes of that level")
        fold[c, targets.pop()] = 1.0
    return names, fold


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-dir", type=Path, default=SPLIT_DIR)
    args = parser.parse_args(argv)
    params = load_section("merge_genres")
    seed = load_section("split").seed
    frames = [read_parquet(args.in_dir / f"{name}.parquet") for name in PROBE_SPLITS]
    started = time.perf_counter()
    result = learn(frames, params, seed)
    genres = result["genres"]
    params = result["params"]
    text = taxonomy_yaml(result["groups"], genres, result["shares"], params)
    with atomic_path(LEARNED_FILE) as tmp:
        tmp.write_text(text)
    write_json(MERGES_REPORT, {
        "genres": genres,
        "max_group_size": params.max_group_size,
        "probe": {"model": f"random forest, {PROBE_TREES} trees, {PROBE_FOLDS} folds by recording",
                  "rows": int(sum(len(f) for f in frames)),
                  "out_of_fold_accuracy": result["probe_accuracy"]},
        "merges": [{"classes_after": m["classes_after"], "rows_gained": m["rows_gained"],
                    "merged": [[genres[i] for i in side] for side in m["merged"]]}
                   for m in result["merges"]],
    })
    largest = max(len(g) for g in result["groups"])
    print(f"taxonomy: {len(genres)} genres -> {params.n_groups} classes (largest {largest} genres), "
          f"probe out-of-fold accuracy {result['probe_accuracy']:.4f}, "
          f"{time.perf_counter() - started:.0f} s -> {LEARNED_FILE}")


if __name__ == "__main__":
    main()
