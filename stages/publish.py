"""Stage publish: the model named by param ``model`` becomes the published model.

Copies the model (a family, or the blend: stages.model_files.family_file) to
models/genre-classifier.keras (the `genre-classifier` artifact in dvc.yaml, one path
whatever is published): a network stays a .keras file, a tree family becomes a blend of
one member (weight 1, temperature 1: the same probabilities), the blend stays a blend
zip; stages.model_files.load_model reads each. When the families learned genres that
answer at merged classes (data/labeled/fold.json, param merge_genres.train_on), the
published file is a blend that folds: it answers in the merged classes. Writes its confusion analysis: the
clustered confusion heatmap plots/confusion.png, per-genre precision/recall/F1
plots/per_genre.csv and the most confused genre pairs plots/top_confusions.csv (the study's
"interchangeable genres"), test accuracy and macro-F1 against the number of classes
when its probabilities are summed per class of the learned taxonomy's hierarchy
(reports/taxonomy.json) and of the study's merge, beside the majority-class share
(plots/taxonomy/{learned,study}.csv), plus reports/published.json (with its accuracy
difference from the best single family and that difference's interval, from
reports/evaluate.json). The analysis reads the test probabilities evaluate saved for
every model (data/test_proba) and the missing-feature costs it measured, so no model is
loaded or run here. Depends on every model file (DVC cannot name one file from the
param) but on nothing the param changes, so `dvc exp run -S model=boosting` re-runs only
this, in seconds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, precision_recall_fscore_support

from stages.common import (
    GENRE_COLUMN,
    Fold,
    MODELS_DIR,
    PLOTS_DIR,
    PUBLISHED_MODEL,
    REPORTS_DIR,
    TEST_PROBA_DIR,
    UserError,
    answer_classes,
    atomic_path,
    cli,
    label_indices,
    read_json,
    read_labeled,
    read_fold,
    read_proba,
    write_csv,
    write_json,
)
from stages.merge_genres import GROUPS_FILES, genre_mapping, read_groups
from stages.params import BLEND, TREES, load_model_name
from stages.ranking import top_class
from stages.taxonomy import MERGES_REPORT, accuracy_curves

TOP_CONFUSIONS = 20
EVALUATE_REPORT = REPORTS_DIR / "evaluate.json"


def confusion_counts(actual: np.ndarray, predicted: np.ndarray, n: int) -> np.ndarray:
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (actual, predicted), 1)
    return matrix


def top_confusions(matrix: np.ndarray, classes: list[str], k: int = TOP_CONFUSIONS) -> pd.DataFrame:
    """The k largest off-diagonal cells: actual -> predicted, count, share of the actual class."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    support = matrix.sum(axis=1)
    order = np.argsort(-off, axis=None, kind="stable")[:k]
    rows = []
    for flat in order:
        a, p = np.unravel_index(flat, off.shape)
        if off[a, p] == 0:
            break
        rows.append({"pair": f"{classes[a]} → {classes[p]}", "actual": classes[a],
                     "predicted": classes[p], "count": int(off[a, p]),
                     "share_of_actual": round(off[a, p] / support[a], 4)})
    return pd.DataFrame(rows, columns=["pair", "actual", "predicted", "count", "share_of_actual"])


def per_class_scores(actual, predicted, classes: list[str]) -> pd.DataFrame:
    labels = np.arange(len(classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        actual, predicted, labels=labels, zero_division=0)
    frame = pd.DataFrame({"genre": classes, "precision": precision.round(4),
                          "recall": recall.round(4), "f1": f1.round(4), "support": support})
    return frame.sort_values(["f1", "genre"], ascending=[False, True]).reset_index(drop=True)


# --- plots ---------------------------------------------------------------------------


def cluster_order(matrix: np.ndarray) -> np.ndarray:
    """Order classes so that genres confused with each other sit together."""
    from scipy.cluster.hierarchy import leaves_list, linkage  # noqa: PLC0415
    from scipy.spatial.distance import squareform  # noqa: PLC0415

    n = matrix.shape[0]
    if n < 3:
        return np.arange(n)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    similarity = (rates + rates.T) / 2
    np.fill_diagonal(similarity, 0)
    distance = similarity.max() - similarity
    np.fill_diagonal(distance, 0)
    return leaves_list(linkage(squareform(distance, checks=False), method="average"))


def _pyplot():
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _save(fig, path: Path) -> None:
    plt = _pyplot()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_confusion(matrix: np.ndarray, classes: list[str], title: str, path: Path) -> None:
    plt = _pyplot()
    order = cluster_order(matrix)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    rates = rates[np.ix_(order, order)]
    names = [classes[i] for i in order]
    side = max(6.0, 0.16 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    image = ax.imshow(rates, cmap="viridis", vmin=0, vmax=max(rates.max(), 1e-9))
    font = 10 if len(classes) <= 30 else 6.5
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=font)
    ax.set_yticks(range(len(names)), names, fontsize=font)
    ax.set_xlabel("predicted genre")
    ax.set_ylabel("actual genre")
    ax.set_title(f"{title}\nrow-normalised; genres ordered by clustering the confusions")
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01, label="share of the actual genre")
    _save(fig, path)


def write_published(model_name: str, source: Path, published: Path, classes: list[str],
                    features: list[str], members: dict, fold: Fold | None = None) -> None:
    """The published file, with ``members`` ({name: JSON value}) inside: a network's
    .keras or the blend's zip copied, a tree family wrapped as a blend of one member; with
    a ``fold``, a blend (of one member for a family) that answers in its classes."""
    from stages.model_files import (  # noqa: PLC0415
        MISSING_MEMBER,
        copy_with_members,
        fold_blend,
        save_blend,
    )

    if model_name == BLEND:
        if fold is None:
            copy_with_members(source, published, members)
        else:
            fold_blend(source, published, fold, members)
    elif model_name in TREES or fold is not None:
        # a network that takes missing features stays what adapt and NaN rows reach
        fallback = model_name if MISSING_MEMBER in members else None
        save_blend(published, [(model_name, source, 1.0)], classes, features, 1.0, members,
                   fallback=fallback, fold=fold)
    else:
        copy_with_members(source, published, members)


def comparison_of(model_name: str, report: dict) -> dict | None:
    """What evaluate measured for this model against the best single family (on validation)."""
    comparison = (report or {}).get("comparison")
    if not comparison:
        return None
    gap = comparison["models"].get(model_name)
    if model_name == comparison["reference"]:
        gap = {"difference": 0.0, "low": 0.0, "high": 0.0}
    return {"reference": comparison["reference"], "chosen_by": comparison["chosen_by"],
            "level": comparison["level"], **(gap or {})}


def missing_costs(model_name: str, report: dict) -> dict[str, float]:
    """What evaluate measured for this model with each set of features missing."""
    costs = (report or {}).get("missing_feature_accuracy", {}).get(model_name)
    if costs is None:
        raise UserError(f"{EVALUATE_REPORT}: no missing-feature accuracy for {model_name}, "
                        "which takes missing features: re-run evaluate (dvc repro)")
    return costs


def publish(model_name: str, report: dict, models_dir: Path = MODELS_DIR,
            plots_dir: Path = PLOTS_DIR, published: Path = PUBLISHED_MODEL,
            test_proba_dir: Path = TEST_PROBA_DIR) -> dict:
    """Publish ``model_name`` with its confusion analysis, from the test probabilities and
    the ``report`` evaluate wrote for it: no model is loaded or run here."""
    from stages.model_files import (  # noqa: PLC0415
        MISSING_MEMBER,
        TAXONOMY_MEMBER,
        family_file,
        read_classes_and_features,
        read_member,
    )

    source = models_dir / family_file(model_name).name
    learned, features = read_classes_and_features(source)
    fold = read_fold()
    classes = answer_classes(fold, learned, str(source))
    test = read_labeled("test")
    if fold is not None:
        test = fold.relabel(test)
    actual = label_indices(test, classes)
    proba = read_proba(test_proba_dir / f"{model_name}.npy", len(test), len(classes), "test",
                       "evaluate")
    predicted = top_class(proba)
    matrix = confusion_counts(actual, predicted, len(classes))
    scores = per_class_scores(actual, predicted, classes)
    accuracy = float((actual == predicted).mean())
    macro_f1 = float(f1_score(actual, predicted, labels=np.arange(len(classes)), average="macro",
                              zero_division=0))
    write_csv(plots_dir / "per_genre.csv", scores)
    write_csv(plots_dir / "top_confusions.csv", top_confusions(matrix, classes))
    plot_confusion(matrix, classes,
                   f"{model_name}: test accuracy {accuracy:.3f}, {len(classes)} classes",
                   plots_dir / "confusion.png")
    try:
        study = genre_mapping(read_groups(GROUPS_FILES["study"]), set(test[GENRE_COLUMN]),
                              GROUPS_FILES["study"])
    except UserError:  # the study's genres are not all in this data (your own dataset)
        study = None
    hierarchy = read_json(MERGES_REPORT)
    curves = accuracy_curves(proba, test, classes, hierarchy, study)
    for taxonomy, curve in curves.items():
        write_csv(plots_dir / "taxonomy" / f"{taxonomy}.csv", curve)
    # what travels inside the published file: the hierarchy (predict --level) and, for a
    # model that takes missing features, what each missing set costs on the test split
    members = {TAXONOMY_MEMBER: {"genres": hierarchy["genres"], "merges": hierarchy["merges"]}}
    missing = read_member(source, MISSING_MEMBER)
    if missing is not None:
        missing = {**missing, "test_rows": int(len(test)),
                   "test_accuracy": missing_costs(model_name, report)}
        members[MISSING_MEMBER] = missing
    write_published(model_name, source, published, learned, features, members, fold)
    return {"model": model_name,
            # what the published file is: a .keras network, or a blend zip (a tree family,
            # or any family answering at merged classes, is a blend of one)
            "format": "blend" if model_name in (BLEND, *TREES) or fold else "keras",
            "classes": len(classes), "features": features,
            # the genres it learned, when it answers at merged classes (param merge_genres.train_on)
            "folded_from": len(learned) if fold else None,
            "test_rows": int(len(test)),
            "accuracy": round(accuracy, 5), "macro_f1": round(macro_f1, 5),
            "missing_feature_accuracy": missing["test_accuracy"] if missing else None,
            "accuracy_by_classes": {name: curve.to_dict(orient="records")
                                    for name, curve in curves.items()}}


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    name = load_model_name()
    evaluated = read_json(EVALUATE_REPORT)
    report = publish(name, evaluated)
    report["vs_best_single_family"] = comparison_of(name, evaluated)
    write_json(REPORTS_DIR / "published.json", report)
    print(f"publish {name} -> {PUBLISHED_MODEL}: accuracy {report['accuracy']:.4f}, "
          f"macro-F1 {report['macro_f1']:.4f}, {report['classes']} classes")


if __name__ == "__main__":
    main()
