"""Stage evaluate: score every trained family on the test split.

Writes metrics/test.json (numbers only, so one `dvc exp show` row compares every
family and the blend: accuracy, top-5, macro-F1 and calibration error, plus the test
set's chance and ceiling lines) and reports/evaluate.json (every metric of every model,
for reading, and each model's accuracy difference from the best single family, chosen
by validation accuracy, with its 95% paired-bootstrap interval over the test split's
recordings). The same once every model answers at 66 classes, its probabilities summed
per class of the learned taxonomy and of the study's merge (what `predict --level`
answers), with the reference chosen on the folded validation split ("folded" in the
report), and for each model that takes missing features its test accuracy with each set
of them missing. Saves every model's test probabilities (data/test_proba/<model>.npy):
the published model's confusion analysis is the publish stage's job, from those.
When the families learned genres that answer at merged classes (data/labeled/fold.json,
param merge_genres.train_on), everything here is scored at those classes, each model's
probabilities summed per class, as the published file answers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, log_loss

from stages.common import (
    API_MISSING,
    FEATURES,
    GENRE_COLUMN,
    ID_COLUMN,
    LABEL_COLUMN,
    METRICS_DIR,
    MODELS_DIR,
    PLOTS_DIR,
    REPORTS_DIR,
    SPLITS,
    TEST_PROBA_DIR,
    UserError,
    answer_classes,
    cli,
    label_indices,
    read_fold,
    read_labeled,
    validation_proba,
    write_csv,
    write_json,
    write_proba,
)
from stages.calibration import ECE_BINS, reliability
from stages.params import BLEND, FAMILIES, MODELS, load_final_fit
from stages.ranking import top_class, top_k_hits
from stages.split import recording_ids

# what metrics/test.json keeps of each family (the full set goes to the report)
HEADLINE = ("accuracy", "top5", "macro_f1", "ece")
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
BOOTSTRAP_LEVEL = 0.95
BOOTSTRAP_CELLS = 1 << 22  # (resample, recording) draws held at once: bounds the memory


# --- metrics (pure functions of labels and probabilities) ----------------------


def top_k_accuracy(y_true: np.ndarray, proba: np.ndarray, k: int) -> float:
    """Share of rows whose class is among the k that predict would answer (same tie rule)."""
    hits = top_k_hits(y_true, proba, k)
    return float(hits.mean()) if hits.size else 0.0


def labels_per_track(frames: list[pd.DataFrame]) -> set[tuple[str, str]]:
    """Every (track_id, label) pair anywhere in the (cleaned, labeled) data: a set of
    plain pairs (a pandas groupby into sets took 1.6 s on the real data, this 0.04)."""
    pairs: set[tuple[str, str]] = set()
    for frame in frames:
        pairs.update(zip(frame[ID_COLUMN].tolist(), frame[LABEL_COLUMN].tolist()))
    return pairs


def any_genre_accuracy(track_ids, predicted_labels, track_labels: set[tuple[str, str]]) -> float:
    """A prediction counts as right when the track carries that label under any genre."""
    hits = [(tid, pred) in track_labels for tid, pred in zip(track_ids, predicted_labels)]
    return float(np.mean(hits)) if hits else 0.0


def ceiling_accuracy(test: pd.DataFrame, features: list[str] = FEATURES) -> float:
    """Best top-1 any model of ``features`` can reach: identical inputs get one
    prediction, so per group of identical inputs only the most frequent label can be right."""
    if test.empty:
        return 0.0
    counts = test.groupby([*features, LABEL_COLUMN], sort=False).size()
    best = counts.groupby(level=list(range(len(features))), sort=False).max()
    return float(best.sum() / len(test))


def chance_accuracy(test: pd.DataFrame) -> float:
    """The majority-class share: what always answering the largest class scores.
    Merging genres raises it, so a merged accuracy is only read beside it."""
    if test.empty:
        return 0.0
    return float(test[LABEL_COLUMN].value_counts().iloc[0] / len(test))


def seen_in_train(test: pd.DataFrame, train: pd.DataFrame,
                  features: list[str] = FEATURES) -> np.ndarray:
    """True for test rows whose feature values occur exactly in the training split.

    The group split keeps each track_id in one split, but the same recording also
    appears under other track_ids (another release, a compilation) with identical
    features; those test rows can be answered by memorizing the training set.
    """
    def row_hashes(frame):
        return pd.util.hash_pandas_object(frame[features], index=False).to_numpy()

    return np.isin(row_hashes(test), row_hashes(train))


def _share_right(right: np.ndarray) -> float | None:
    return round(float(right.mean()), 5) if right.size else None


def test_set_stats(test: pd.DataFrame, seen: np.ndarray, classes: list[str],
                   features: list[str] = FEATURES) -> dict:
    """What the test set allows, whatever the model: chance and ceiling lines."""
    return {
        "classes": len(classes),
        "rows": int(len(test)),
        "chance": round(chance_accuracy(test), 5),
        "ceiling": round(ceiling_accuracy(test, features), 5),
        "seen_in_train_share": round(float(seen.mean()), 5) if seen.size else 0.0,
    }


def score(proba: np.ndarray, test: pd.DataFrame, classes: list[str],
          track_labels: set[tuple[str, str]], seen: np.ndarray) -> dict:
    """One model's test metrics; ``seen`` marks test rows whose features occur in train."""
    actual = label_indices(test, classes)
    predicted = top_class(proba)
    labels = np.arange(len(classes))
    right = predicted == actual
    clipped = np.clip(proba, 1e-7, 1.0)
    return {
        "accuracy": round(float(right.mean()), 5),
        "top3": round(top_k_accuracy(actual, proba, 3), 5),
        "top5": round(top_k_accuracy(actual, proba, 5), 5),
        "macro_f1": round(float(f1_score(actual, predicted, labels=labels, average="macro",
                                         zero_division=0)), 5),
        "weighted_f1": round(float(f1_score(actual, predicted, labels=labels,
                                            average="weighted", zero_division=0)), 5),
        "log_loss": round(float(log_loss(actual, clipped / clipped.sum(axis=1, keepdims=True),
                                         labels=labels)), 5),
        # expected calibration error: row-weighted gap between confidence and accuracy
        "ece": round(reliability(proba, actual)["ece"], 5),
        "any_genre_accuracy": round(any_genre_accuracy(
            test[ID_COLUMN], np.asarray(classes)[predicted], track_labels), 5),
        # accuracy on test rows whose exact features are / are not in the training split
        "accuracy_seen_in_train": _share_right(right[seen]),
        "accuracy_unseen": _share_right(right[~seen]),
    }


def paired_bootstrap(right_a: np.ndarray, right_b: np.ndarray, groups: np.ndarray,
                     resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                     level: float = BOOTSTRAP_LEVEL) -> dict:
    """Accuracy of a minus accuracy of b on the same rows, and its percentile interval
    over ``resamples`` bootstrap resamples of whole groups.

    ``right_a`` / ``right_b``: per row, whether each model is right; ``groups``: per row,
    its group (a recording: its rows are not independent, so they are drawn together).
    Both models are scored on the same resampled rows (paired)."""
    right_a, right_b = np.asarray(right_a, dtype=bool), np.asarray(right_b, dtype=bool)
    difference = right_a.astype(np.float64) - right_b.astype(np.float64)
    _, group = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(group.max()) + 1 if len(group) else 0
    if n_groups == 0:
        return {"difference": None, "low": None, "high": None}
    # per group: the summed difference and its rows; a resample draws groups
    group_difference = np.bincount(group, weights=difference, minlength=n_groups)
    group_rows = np.bincount(group, minlength=n_groups).astype(np.float64)
    rng = np.random.default_rng(seed)
    chunk = max(1, BOOTSTRAP_CELLS // n_groups)
    draws = []
    for start in range(0, resamples, chunk):
        picks = rng.integers(0, n_groups, size=(min(chunk, resamples - start), n_groups))
        draws.append(group_difference[picks].sum(axis=1) / group_rows[picks].sum(axis=1))
    low, high = np.quantile(np.concatenate(draws), [(1 - level) / 2, (1 + level) / 2])
    return {"difference": round(float(difference.mean()), 5), "low": round(float(low), 5),
            "high": round(float(high), 5)}


def comparisons(right: dict[str, np.ndarray], val_accuracy: dict[str, float],
                groups: np.ndarray, singles) -> dict | None:
    """Every model against the best single family, the reference chosen by validation
    accuracy (never by a test score; ties to the first in ``singles``)."""
    singles = [name for name in singles if name in right]
    if not singles:
        return None
    reference = max(singles, key=lambda name: val_accuracy[name])  # max keeps the first
    return {
        "reference": reference, "chosen_by": "validation accuracy",
        "resampled": "recordings of the test split", "groups": int(len(np.unique(groups))),
        "resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED, "level": BOOTSTRAP_LEVEL,
        "models": {name: paired_bootstrap(right[name], right[reference], groups)
                   for name in right if name != reference},
    }


def folded_comparisons(test_probas: dict[str, np.ndarray], val_probas: dict[str, np.ndarray],
                       test: pd.DataFrame, val: pd.DataFrame, classes: list[str],
                       taxonomies: dict[str, dict[str, str]], singles) -> dict:
    """Every model answering at a coarser level: its probabilities summed per class of each
    taxonomy ({name: {genre: class}}) the model's classes nest in, as `predict --level`
    answers. Per taxonomy: each model's test accuracy and the chance line, and
    comparisons() against the single family best on the folded validation split."""
    from stages.taxonomy import class_genres, coarse_fold, coarse_labels  # noqa: PLC0415

    genres_of = class_genres(test)
    groups = recording_ids(test)
    folded = {}
    for name, mapping in taxonomies.items():
        fold = coarse_fold(classes, mapping, genres_of)
        if fold is None or len(fold[0]) >= len(classes):  # no nesting, or nothing merged
            continue
        index, matrix = fold
        actual, val_actual = coarse_labels(test, mapping, index), coarse_labels(val, mapping, index)
        if actual is None or val_actual is None:
            continue
        right = {model: top_class(proba @ matrix) == actual
                 for model, proba in test_probas.items()}
        val_accuracy = {model: float((top_class(proba @ matrix) == val_actual).mean())
                        for model, proba in val_probas.items()}
        folded[name] = {
            "classes": len(index),
            "chance": round(float(np.bincount(actual).max() / len(actual)), 5),
            "accuracy": {model: round(float(hits.mean()), 5) for model, hits in right.items()},
            "val_accuracy": {model: round(acc, 5) for model, acc in val_accuracy.items()},
            "comparison": comparisons(right, val_accuracy, groups, singles),
        }
    return folded


def merged_taxonomies(genres: set[str]) -> dict[str, dict[str, str]]:
    """{learned, study: {genre: class}} for the taxonomy files this data fits."""
    from stages.merge_genres import GROUPS_FILES, genre_mapping, read_groups  # noqa: PLC0415

    taxonomies = {}
    for name, path in GROUPS_FILES.items():
        try:
            taxonomies[name] = genre_mapping(read_groups(path), genres, path)
        except UserError:  # no such file, or its genres are not all in this data
            continue
    return taxonomies


def reliability_curve(proba: np.ndarray, actual: np.ndarray) -> pd.DataFrame:
    """The reliability diagram's points: per confidence bin with rows, its mean confidence
    (top-1 probability) and the share of those rows that are right."""
    table = reliability(proba, actual, ECE_BINS)
    filled = table["rows"] > 0
    return pd.DataFrame({"confidence": np.round(table["confidence"][filled], 4),
                         "accuracy": np.round(table["accuracy"][filled], 4),
                         "rows": table["rows"][filled]})


def ideal_curve(bins: int = ECE_BINS) -> pd.DataFrame:
    """The diagonal a calibrated model follows, drawn beside the families."""
    centres = np.round((np.arange(bins) + 0.5) / bins, 4)
    return pd.DataFrame({"confidence": centres, "accuracy": centres})


def hidden_feature_sets(features: list[str]) -> list[tuple[str, ...]]:
    """What a masked model is scored without: nothing, each feature alone, popularity and
    explicit together (what the audio-features API lacks) and those two plus each other one."""
    sets = [(), *((f,) for f in features)]
    api = tuple(f for f in features if f in API_MISSING)
    if len(api) == len(API_MISSING):
        sets += [api, *(api + (f,) for f in features if f not in api)]
    return sets


def missing_feature_accuracy(predict, x: np.ndarray, actual: np.ndarray, features: list[str],
                             proba: np.ndarray) -> dict[str, float]:
    """Test accuracy with each feature set of hidden_feature_sets() missing (NaN), keyed
    by the missing features in the model's order joined with ',' ('' for none): what
    predict tells a user whose file lacks them. ``predict``: the model's probabilities for
    rows; ``proba``: those of x itself."""
    accuracy = {}
    for hidden in hidden_feature_sets(features):
        if hidden:
            masked = x.copy()
            masked[:, [features.index(f) for f in hidden]] = np.nan
            right = top_class(predict(masked)) == actual
        else:
            right = top_class(proba) == actual
        accuracy[",".join(f for f in features if f in hidden)] = round(float(right.mean()), 5)
    return accuracy


def headline(report: dict) -> dict:
    """metrics/test.json: a few numbers per family, then the chance and ceiling lines."""
    metrics = {family: {key: scores[key] for key in HEADLINE}
               for family, scores in report["families"].items()}
    metrics["chance"] = report["test_set"]["chance"]
    metrics["ceiling"] = report["test_set"]["ceiling"]
    return metrics


def evaluate(families, models_dir: Path = MODELS_DIR, final_fit: str = "train"
             ) -> tuple[dict, dict, dict]:
    """Score each saved model (a family, or the blend) on the test split; return the full
    report, each model's reliability curve and its test probabilities. Validation accuracy
    picks the single family the others are compared with."""
    from stages.tf_setup import quiet_tensorflow  # noqa: PLC0415

    quiet_tensorflow()
    from stages.model_files import (  # noqa: PLC0415
        MISSING_MEMBER,
        Blend,
        family_file,
        is_blend,
        load_model,
        predict_proba,
        read_features,
        read_member,
        same_member_files,
    )

    learned_splits = {name: read_labeled(name) for name in SPLITS}  # labels: what they learned
    fold = read_fold()
    # labels as the models answer: the merged class of each genre, with a fold
    splits = {name: fold.relabel(frame) if fold else frame
              for name, frame in learned_splits.items()}
    test = splits["test"]
    track_labels = labels_per_track(list(splits.values()))
    paths = {family: models_dir / family_file(family).name for family in families}
    # The test-set lines (ceiling, rows seen in train) depend on what the models see:
    # the features any of them takes (one list, param `features`, in a pipeline run).
    used = {f for path in paths.values() for f in read_features(path)}
    union = [f for f in FEATURES if f in used]
    seen = seen_in_train(test, splits["train"], union)
    report = {"families": {}}
    curves, right, val_accuracy, probas, val_probas, without = {}, {}, {}, {}, {}, {}
    features_of, learned_probas, learned_val_probas = {}, {}, {}
    class_lists = set()

    def answer(proba):  # in the classes the models answer in
        return proba if fold is None else fold.apply(proba)

    for family, path in paths.items():  # one model in memory at a time
        # a blend member that is byte for byte a family scored above is neither loaded nor
        # run again: its test probabilities are that family's
        same = same_member_files(path, paths) if is_blend(path) else []
        known = {name: learned_probas[name] for name in same if name in learned_probas}
        model, learned, features = load_model(path, unloaded=known)
        classes = answer_classes(fold, learned, str(path))
        x = test[features].to_numpy("float32")  # its own features
        if isinstance(model, Blend):
            learned_probas[family] = model.predict_proba(x, known=known)
        else:
            learned_probas[family] = predict_proba(model, x)
        proba = answer(learned_probas[family])
        probas[family], features_of[family] = proba, features
        actual = label_indices(test, classes)
        if read_member(path, MISSING_MEMBER) is not None:  # it takes missing features
            fallback = getattr(model, "fallback", None)
            if fallback in same and fallback in without and features_of[fallback] == features:
                # a blend answers a row with a gap by its fallback member alone: that
                # family's table, but for the rows without gaps
                without[family] = {**without[fallback], "": round(float(
                    (top_class(proba) == actual).mean()), 5)}
            else:
                without[family] = missing_feature_accuracy(
                    lambda rows: answer(predict_proba(model, rows)), x, actual, features, proba)
        val = splits["val"]
        # the fit on train alone's (with final_fit = train+val the model has seen validation)
        learned_val_probas[family] = validation_proba(
            family, len(val), len(learned), final_fit,
            lambda: predict_proba(model, val[features].to_numpy("float32")))
        del model
        val_proba = val_probas[family] = answer(learned_val_probas[family])
        class_lists.add(tuple(learned))
        val_accuracy[family] = round(float(
            (top_class(val_proba) == label_indices(val, classes)).mean()), 5)
        report["families"][family] = {
            **score(proba, test, classes, track_labels, seen), "features": len(features),
            "val_accuracy": val_accuracy[family]}
        curves[family] = reliability_curve(proba, actual)
        right[family] = top_class(proba) == actual
    report["test_set"] = test_set_stats(test, seen, classes, union)
    report["final_fit"] = final_fit
    # what publish reports and packs into the published file for a model that takes
    # missing features: its test accuracy with each set of them missing
    report["missing_feature_accuracy"] = without
    report["comparison"] = comparisons(right, val_accuracy, recording_ids(test), FAMILIES)
    report["fold"] = {"genres": len(fold.genres), "classes": len(fold.classes)} if fold else None
    # one class list for every model here (a pipeline run), else no folding; from the
    # classes they learned (with a fold too, the other taxonomy's scores)
    if len(class_lists) == 1:
        genres = set().union(*(set(frame[GENRE_COLUMN]) for frame in splits.values()))
        report["folded"] = folded_comparisons(
            learned_probas, learned_val_probas, learned_splits["test"], learned_splits["val"],
            learned, merged_taxonomies(genres), FAMILIES)
    return report, curves, probas


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    report, curves, probas = evaluate(MODELS, final_fit=load_final_fit())
    for family, curve in {**curves, "ideal": ideal_curve()}.items():
        write_csv(PLOTS_DIR / "calibration" / f"{family}.csv", curve)
    for name, proba in probas.items():
        write_proba(TEST_PROBA_DIR / f"{name}.npy", proba)
    write_json(REPORTS_DIR / "evaluate.json", report)
    write_json(METRICS_DIR / "test.json", headline(report))
    stats = report["test_set"]
    for family, scores in report["families"].items():
        print(f"evaluate {family}: accuracy {scores['accuracy']:.4f}, top5 {scores['top5']:.4f}, "
              f"macro-F1 {scores['macro_f1']:.4f}, any-genre {scores['any_genre_accuracy']:.4f}, "
              f"calibration error {scores['ece']:.4f}")
    comparison = report["comparison"]
    for name, gap in comparison["models"].items():
        print(f"evaluate {name} - {comparison['reference']} (best on validation): "
              f"{gap['difference']:+.4f}, 95% interval [{gap['low']:+.4f}, {gap['high']:+.4f}] "
              f"over {comparison['groups']} test recordings")
    for taxonomy, folded in report.get("folded", {}).items():
        comparison = folded["comparison"]
        gap = comparison["models"].get(BLEND)
        if gap:
            print(f"evaluate {BLEND} at {folded['classes']} classes ({taxonomy}, folded): "
                  f"{folded['accuracy'][BLEND]:.4f}, {gap['difference']:+.4f} "
                  f"[{gap['low']:+.4f}, {gap['high']:+.4f}] against {comparison['reference']}, "
                  f"chance {folded['chance']:.4f}")
    print(f"evaluate: {stats['rows']} test rows, {stats['classes']} classes, "
          f"chance {stats['chance']:.4f}, ceiling {stats['ceiling']:.4f}")


if __name__ == "__main__":
    main()
