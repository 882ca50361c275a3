"""Stage evaluate: score the model named by param ``model`` on the test split.

Writes metrics/evaluate.json and the plots DVC renders (confusion matrix,
per-genre F1, the most confused genre pairs).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, log_loss, precision_recall_fscore_support

from stages.common import (
    FEATURES,
    ID_COLUMN,
    LABEL_COLUMN,
    METRICS_DIR,
    MODELS_DIR,
    PLOTS_DIR,
    SPLITS,
    atomic_path,
    cli,
    quiet_tensorflow,
    read_labeled,
    write_csv,
    write_json,
)
from stages.params import load_model_name

TOP_CONFUSIONS = 20


# --- metrics (pure functions of labels and probabilities) ----------------------


def top_k_accuracy(y_true: np.ndarray, proba: np.ndarray, k: int) -> float:
    k = min(k, proba.shape[1])
    top = np.argpartition(-proba, k - 1, axis=1)[:, :k]
    return float((top == y_true[:, None]).any(axis=1).mean())


def labels_per_track(frames: list[pd.DataFrame]) -> dict[str, set[str]]:
    """Every label each track_id carries anywhere in the (cleaned, labeled) data."""
    both = pd.concat([f[[ID_COLUMN, LABEL_COLUMN]] for f in frames], ignore_index=True)
    return both.groupby(ID_COLUMN)[LABEL_COLUMN].agg(set).to_dict()


def any_genre_accuracy(track_ids, predicted_labels, track_labels: dict[str, set[str]]) -> float:
    """A prediction counts as right when the track carries that label under any genre."""
    hits = [pred in track_labels[tid] for tid, pred in zip(track_ids, predicted_labels)]
    return float(np.mean(hits)) if hits else 0.0


def ceiling_accuracy(test: pd.DataFrame) -> float:
    """Best top-1 any model can reach: identical feature rows get one prediction,
    so per group of identical inputs only the most frequent label can be right."""
    if test.empty:
        return 0.0
    counts = test.groupby([*FEATURES, LABEL_COLUMN], sort=False).size()
    best = counts.groupby(level=list(range(len(FEATURES))), sort=False).max()
    return float(best.sum() / len(test))


def seen_in_train(test: pd.DataFrame, train: pd.DataFrame) -> np.ndarray:
    """True for test rows whose 15 feature values occur exactly in the training split.

    The group split keeps each track_id in one split, but the same recording also
    appears under other track_ids (another release, a compilation) with identical
    features; those test rows can be answered by memorizing the training set.
    """
    def row_hashes(frame):
        return pd.util.hash_pandas_object(frame[FEATURES], index=False).to_numpy()

    return np.isin(row_hashes(test), row_hashes(train))


def _share_right(right: np.ndarray) -> float | None:
    return round(float(right.mean()), 5) if right.size else None


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
        rows.append({"actual": classes[a], "predicted": classes[p], "count": int(off[a, p]),
                     "share_of_actual": round(off[a, p] / support[a], 4)})
    return pd.DataFrame(rows, columns=["actual", "predicted", "count", "share_of_actual"])


def per_class_scores(actual, predicted, classes: list[str]) -> pd.DataFrame:
    labels = np.arange(len(classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        actual, predicted, labels=labels, zero_division=0)
    frame = pd.DataFrame({"genre": classes, "precision": precision.round(4),
                          "recall": recall.round(4), "f1": f1.round(4), "support": support})
    return frame.sort_values(["f1", "genre"], ascending=[False, True]).reset_index(drop=True)


def score(model_name: str, proba: np.ndarray, test: pd.DataFrame, classes: list[str],
          track_labels: dict[str, set[str]], seen: np.ndarray) -> dict:
    """Test metrics; ``seen`` marks test rows whose features occur in train (seen_in_train)."""
    index = {c: i for i, c in enumerate(classes)}
    actual = test[LABEL_COLUMN].map(index).to_numpy()
    predicted = proba.argmax(axis=1)
    labels = np.arange(len(classes))
    right = predicted == actual
    clipped = np.clip(proba, 1e-7, 1.0)
    return {
        "model": model_name,
        "classes": len(classes),
        "n_test": int(len(test)),
        "accuracy": round(float(right.mean()), 5),
        "top3": round(top_k_accuracy(actual, proba, 3), 5),
        "top5": round(top_k_accuracy(actual, proba, 5), 5),
        "macro_f1": round(float(f1_score(actual, predicted, labels=labels, average="macro",
                                         zero_division=0)), 5),
        "weighted_f1": round(float(f1_score(actual, predicted, labels=labels,
                                            average="weighted", zero_division=0)), 5),
        "log_loss": round(float(log_loss(actual, clipped / clipped.sum(axis=1, keepdims=True),
                                         labels=labels)), 5),
        "any_genre_accuracy": round(any_genre_accuracy(
            test[ID_COLUMN], np.asarray(classes)[predicted], track_labels), 5),
        "ceiling": round(ceiling_accuracy(test), 5),
        # accuracy on test rows whose exact features are / are not in the training split
        "seen_in_train_share": round(float(seen.mean()), 5) if seen.size else 0.0,
        "accuracy_seen_in_train": _share_right(right[seen]),
        "accuracy_unseen": _share_right(right[~seen]),
    }


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


def plot_per_genre_f1(scores: pd.DataFrame, title: str, path: Path) -> None:
    plt = _pyplot()
    ordered = scores.sort_values("f1")
    height = max(4.0, 0.14 * len(ordered) + 1.5)
    fig, ax = plt.subplots(figsize=(7, height))
    ax.barh(ordered["genre"], ordered["f1"], color="tab:blue")
    ax.set_ylim(-0.6, len(ordered) - 0.4)
    ax.tick_params(axis="y", labelsize=10 if len(ordered) <= 30 else 6.5)
    ax.set_xlabel("F1 on the test split")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)


def evaluate(model_name: str, model_path: Path, out_metrics: Path, plots_dir: Path) -> dict:
    quiet_tensorflow()
    from stages.train import load_model  # noqa: PLC0415

    model, classes = load_model(model_path)
    splits = {name: read_labeled(name) for name in SPLITS}
    test = splits["test"]
    proba = model.predict(test[FEATURES].to_numpy("float32"), batch_size=4096, verbose=0)
    result = score(model_name, proba, test, classes, labels_per_track(list(splits.values())),
                   seen_in_train(test, splits["train"]))

    index = {c: i for i, c in enumerate(classes)}
    actual = test[LABEL_COLUMN].map(index).to_numpy()
    predicted = proba.argmax(axis=1)
    matrix = confusion_counts(actual, predicted, len(classes))
    names = np.asarray(classes)
    write_csv(plots_dir / "confusion.csv",
              pd.DataFrame({"actual": names[actual], "predicted": names[predicted]}))
    scores = per_class_scores(actual, predicted, classes)
    write_csv(plots_dir / "per_genre.csv", scores)
    write_csv(plots_dir / "top_confusions.csv", top_confusions(matrix, classes))
    title = f"{model_name}: test accuracy {result['accuracy']:.3f}, {len(classes)} classes"
    plot_confusion(matrix, classes, title, plots_dir / "confusion.png")
    plot_per_genre_f1(scores, f"{model_name}: per-genre F1 (macro {result['macro_f1']:.3f})",
                      plots_dir / "per_genre_f1.png")
    write_json(out_metrics, result)
    return result


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    name = load_model_name()
    result = evaluate(name, MODELS_DIR / f"{name}.keras", METRICS_DIR / "evaluate.json", PLOTS_DIR)
    print(f"evaluate {name}: accuracy {result['accuracy']:.4f}, top5 {result['top5']:.4f}, "
          f"macro-F1 {result['macro_f1']:.4f}, any-genre {result['any_genre_accuracy']:.4f}, "
          f"ceiling {result['ceiling']:.4f}")


if __name__ == "__main__":
    main()
