"""Stages train_forest / train_boosting: ``python -m stages.train_trees FAMILY``.

The tree families, trained on exactly the rows and features the networks get
(data/labeled/{train,val}.parquet, param `features`), with the settings in their
params.yaml section, tuned on the validation split like the networks. Writes
models/FAMILY.npz (plain arrays, class and feature lists inside: loading it runs
no code from the file) and reports/train/FAMILY.json (validation accuracy, trees,
wall time). No TensorFlow here, so editing its set-up does not retrain the trees.
"""

from __future__ import annotations

import argparse
import time

from stages.common import (
    FEATURE_SETS,
    REPORTS_DIR,
    UserError,
    cli,
    feature_ranges,
    label_indices,
    read_classes,
    read_labeled,
    threads,
    training_rows,
    write_json,
    write_val_proba,
)
from stages import calibration
from stages.model_files import family_file
from stages.ranking import top_class
from stages.params import PARAMS_FILE, TREES, load_feature_set, load_final_fit, load_section


def check_fits_features(family: str, params, feature_set: str, path=PARAMS_FILE) -> None:
    """Params that must fit the feature set (param `features`): checked before any fitting,
    where scikit-learn would otherwise fail with a traceback."""
    width = len(FEATURE_SETS[feature_set])
    if family == "forest" and params.max_features > width:
        raise UserError(f"{path}: forest.max_features = {params.max_features}: more than the "
                        f"{width} features of features = {feature_set} (at most {width})")


def train(family: str, params, train_frame, val_frame, classes: list[str],
          features: list[str], n_jobs: int = 2):
    """Fit the family on the training split; return (predictor, summary dict)."""
    return fit_calibrated(family, params, train_frame, val_frame, classes, features, n_jobs)[:2]


def fit_calibrated(family: str, params, train_frame, val_frame, classes: list[str],
                   features: list[str], n_jobs: int = 2):
    """train(), also returning the calibrated predictor's validation probabilities
    (computed for the calibration report anyway): (predictor, summary, val_proba)."""
    from stages import trees  # noqa: PLC0415

    x_train = train_frame[features].to_numpy("float32")
    x_val = val_frame[features].to_numpy("float32")
    y_train, y_val = label_indices(train_frame, classes), label_indices(val_frame, classes)
    started = time.perf_counter()
    model = trees.fit(family, params, x_train, y_train, x_val, y_val, len(classes), n_jobs)
    seconds = time.perf_counter() - started
    val_raw = model.raw_scores(x_val)  # one walk of the validation rows for both sides
    val_proba = model.probabilities(val_raw)
    # probabilities that mean what they say: one temperature fitted on validation
    temperature = calibration.fit_temperature(val_proba, y_val)
    model.temperature = temperature
    summary = {
        "family": family,
        "classes": len(classes),
        "features": list(features),
        "val_accuracy": round(float((top_class(val_proba) == y_val).mean()), 5),
        "trees": int(model.n_trees),
        "train_seconds": round(seconds, 1),
        "fitted_with": model.fitted_with,  # library and version, in the model file too
        "temperature": temperature,
        "val_ece_raw": round(calibration.expected_calibration_error(val_proba, y_val), 5),
    }
    calibrated = model.probabilities(val_raw)
    summary["val_ece"] = round(calibration.expected_calibration_error(calibrated, y_val), 5)
    return model, summary, calibrated


def train_final(family: str, params, train_frame, val_frame, classes: list[str],
                features: list[str], final_fit: str, n_jobs: int = 2):
    """fit_calibrated(), then with final_fit = train+val refit(). Returns (the model to
    save, summary, the validation probabilities of the fit on train alone)."""
    model, summary, val_proba = fit_calibrated(family, params, train_frame, val_frame, classes,
                                               features, n_jobs)
    summary["fit"] = final_fit
    if final_fit == "train+val":
        model = refit(family, params, model, summary,
                      training_rows(train_frame, val_frame, final_fit), classes, features,
                      n_jobs)
    return model, summary, val_proba


def refit(family: str, params, model, summary: dict, rows, classes: list[str],
          features: list[str], n_jobs: int = 2):
    """The family refitted on ``rows`` (train + validation) with what the fit on train
    alone (``model``) chose: boosting's rounds, the temperature. ``summary`` gets the
    refit's rows and seconds."""
    from stages import trees  # noqa: PLC0415

    if family == "boosting":  # no early stopping: the rounds kept on validation
        params = params.model_copy(update={"max_rounds": model.n_trees // len(classes)})
    print(f"train {family}: refit on train+val ({len(rows)} rows)", flush=True)
    started = time.perf_counter()
    final = trees.fit(family, params, rows[features].to_numpy("float32"),
                      label_indices(rows, classes), None, None, len(classes), n_jobs)
    summary["final_fit_seconds"] = round(time.perf_counter() - started, 1)
    summary["final_fit_rows"] = len(rows)
    final.temperature = model.temperature
    return final


@cli
def main(argv: list[str] | None = None) -> None:
    from stages import trees  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family", choices=TREES)
    args = parser.parse_args(argv)
    params = load_section(args.family)
    feature_set = load_feature_set()
    check_fits_features(args.family, params, feature_set)  # before reading data or fitting
    features = FEATURE_SETS[feature_set]
    classes = read_classes()
    train_frame = read_labeled("train")
    val_frame = read_labeled("val")
    final_fit = load_final_fit()
    model, summary, val_proba = train_final(args.family, params, train_frame, val_frame,
                                            classes, features, final_fit, n_jobs=threads())
    write_json(REPORTS_DIR / "train" / f"{args.family}.json", summary)
    write_val_proba(args.family, val_proba)
    fitted_on = training_rows(train_frame, val_frame, final_fit)
    ranges = feature_ranges(fitted_on[features].to_numpy("float64"), features)
    trees.save(model, family_file(args.family), classes, features, ranges=ranges)
    print(f"train {args.family} ({len(features)} features): "
          f"val accuracy {summary['val_accuracy']:.4f}, {summary['trees']} trees, "
          f"{summary['train_seconds']} s")


if __name__ == "__main__":
    main()
