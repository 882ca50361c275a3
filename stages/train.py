"""Stages train_softmax / train_mlp / train_lstm: ``python -m stages.train FAMILY``.

(``--features audio --name NAME`` trains on the 13 features Spotify's audio-features API
returns whatever param `features` says; with ``mlp.feature_dropout`` > 0 the MLP takes
any subset of its features instead, so no stage needs that any more.)

Reads data/labeled/{train,val}.parquet and classes.json, trains the family's
model on the feature set named by param ``features`` with the settings in its
params.yaml section, and writes models/FAMILY.keras (class and feature lists
inside), the per-epoch learning curves
plots/train/FAMILY.csv and a training report reports/train/FAMILY.json (epochs,
best epoch, wall time: a plain output, not a metric, since timings differ between runs).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from stages.common import (
    FEATURE_SETS,
    FEATURES,
    MODELS_DIR,
    PLOTS_DIR,
    REPORTS_DIR,
    cli,
    feature_ranges,
    label_indices,
    read_classes,
    read_labeled,
    training_rows,
    write_csv,
    write_json,
    write_val_proba,
)
from stages.model_files import save_model
from stages.params import NETWORKS, load_feature_set, load_final_fit, load_section
from stages.tf_setup import quiet_tensorflow


def features_and_labels(frame: pd.DataFrame, classes: list[str],
                        features: list[str] = FEATURES) -> tuple[np.ndarray, np.ndarray]:
    return frame[features].to_numpy(dtype="float32"), label_indices(frame, classes).astype("int32")


def learning_curves(history: dict) -> pd.DataFrame:
    """One row per epoch; short column names become the series names in `dvc plots`."""
    return pd.DataFrame({
        "epoch": np.arange(1, len(history["loss"]) + 1),
        "train_accuracy": np.round(history["accuracy"], 5),
        "val_accuracy": np.round(history["val_accuracy"], 5),
        "train_loss": np.round(history["loss"], 5),
        "val_loss": np.round(history["val_loss"], 5),
    })


def epoch_line(epoch: int, epochs: int, seconds: float, logs: dict) -> str:
    """One log line per epoch: Keras' own verbose=2 output takes two."""
    shown = " - ".join(f"{key} {value:.4f}" for key, value in logs.items()
                       if key != "learning_rate")
    return f"epoch {epoch}/{epochs} - {seconds:.1f}s - {shown}"


def epoch_printer(epochs: int):
    import keras  # noqa: PLC0415

    class EpochPrinter(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self.started
            print(epoch_line(epoch + 1, epochs, seconds, logs or {}), flush=True)

    return EpochPrinter()


def mean_monitor(model, x_val: np.ndarray, y_val: np.ndarray):
    """Adds val_mean_loss / val_mean_accuracy (the served model: the members' mean
    probabilities) to each epoch's logs, for early stopping and the epoch line."""
    import keras  # noqa: PLC0415

    class MeanMonitor(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            proba = np.clip(model.predict(x_val, batch_size=4096, verbose=0), 1e-7, 1.0)
            picked = proba[np.arange(len(y_val)), y_val]
            if logs is not None:
                logs["val_mean_loss"] = float(-np.log(picked).mean())
                logs["val_mean_accuracy"] = float((proba.argmax(axis=1) == y_val).mean())

    return MeanMonitor()


def masked_epoch(x: np.ndarray, y: np.ndarray, epoch: int, rate: float,
                 features: list[str], seed: int, together_rate: float = 0.0):
    """One epoch's training rows, shuffled and with features hidden at random (NaN), drawn
    from (seed, epoch): the same params give the same batches. Returns (x, y)."""
    from stages.models import hide_features  # noqa: PLC0415

    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(x))
    return hide_features(x[order], rate, features, rng, together_rate), y[order]


def epoch_dataset(x: np.ndarray, y: np.ndarray, epochs: int, batch_size: int, draw):
    """One tf.data stream of every epoch's batches in turn, ``draw(x, y, epoch)`` giving
    each epoch's rows (fit it with steps_per_epoch: Keras then keeps one iterator across
    epochs). Python runs once per epoch, not per batch (a Python data source cost about a
    quarter of a small network's epoch), and about two epochs are held at a time."""
    import tensorflow as tf  # noqa: PLC0415

    def epochs_drawn():
        for epoch in range(epochs):
            yield draw(x, y, epoch)

    signature = (tf.TensorSpec((len(x), *x.shape[1:]), tf.float32),
                 tf.TensorSpec((len(y), *np.shape(y)[1:]), tf.as_dtype(np.asarray(y).dtype)))
    return (tf.data.Dataset.from_generator(epochs_drawn, output_signature=signature)
            .flat_map(lambda xs, ys: tf.data.Dataset.from_tensor_slices((xs, ys))
                      .batch(batch_size))
            .prefetch(2))


def fit_network(family: str, params, x: np.ndarray, y: np.ndarray, classes, features: list[str],
                epochs: int, validation: tuple[np.ndarray, np.ndarray] | None = None,
                extra_callbacks=()):
    """Build the family's model (seeded) and fit it for at most ``epochs``, with the learning
    rate schedule of ``params.epochs``: with ``validation`` it stops early on it and keeps
    the best epoch's weights. Returns (the served model, the Keras history dict)."""
    import keras  # noqa: PLC0415

    from stages import models  # noqa: PLC0415

    keras.utils.set_random_seed(params.seed)
    model = models.build(family, x, len(classes), params, features)
    steps = int(np.ceil(len(x) / params.batch_size))
    fitted = models.training_model(model)  # an ensemble fits its members, each on its own loss
    models.compile_model(fitted, params, steps, xla=family in models.XLA_FAMILIES)
    callbacks = []
    fit_options = {}
    if validation is not None:
        x_val, y_val = validation
        # An ensemble's members can overfit while their mean still improves: stop on the mean.
        ensemble = fitted is not model
        callbacks = [*([mean_monitor(model, x_val, y_val)] if ensemble else []),
                     keras.callbacks.EarlyStopping(
                         monitor="val_mean_loss" if ensemble else "val_loss", mode="min",
                         patience=params.patience, restore_best_weights=True)]
        fit_options = {"validation_data": (x_val, models.targets(y_val, len(classes), params,
                                                                 fitted))}
    callbacks += [epoch_printer(epochs), *extra_callbacks]
    y_fit = models.targets(y, len(classes), params, fitted)
    if getattr(params, "feature_dropout", 0) > 0:  # the model learns to do without features
        def draw(x, y, epoch):
            return masked_epoch(x, y, epoch, params.feature_dropout, list(features),
                                params.seed, params.popularity_dropout)

        if validation is not None:
            fit_options["validation_batch_size"] = params.batch_size
        batches = epoch_dataset(x, np.ascontiguousarray(y_fit), epochs, params.batch_size, draw)
        fit = fitted.fit(batches, epochs=epochs, steps_per_epoch=steps,
                         shuffle=False,  # drawn by masked_epoch
                         callbacks=callbacks, verbose=0, **fit_options)
    else:
        fit = fitted.fit(x, y_fit, epochs=epochs, batch_size=params.batch_size,
                         callbacks=callbacks, verbose=0, **fit_options)
    if fitted is not model:  # the mean of the members, with their optimizer (saved with it)
        models.compile_model(model, params, steps, optimizer=fitted.optimizer)
    return model, {k: [float(v) for v in values] for k, values in fit.history.items()}


def train(family: str, params, train_frame, val_frame, classes,
          features: list[str] = FEATURES, extra_callbacks=()):
    """Fit the family's model on ``features`` of the training split, stopping early and
    calibrating on validation; return (model, history dict, summary dict)."""
    return fit_calibrated(family, params, train_frame, val_frame, classes, features,
                          extra_callbacks)[:3]


def fit_calibrated(family: str, params, train_frame, val_frame, classes,
                   features: list[str] = FEATURES, extra_callbacks=()):
    """train(), also returning the calibrated model's validation probabilities (computed
    for the calibration report anyway): (model, history, summary, val_proba)."""
    from stages import models  # noqa: PLC0415

    x_train, y_train = features_and_labels(train_frame, classes, features)
    x_val, y_val = features_and_labels(val_frame, classes, features)
    started = time.perf_counter()
    model, history = fit_network(family, params, x_train, y_train, classes, features,
                                 params.epochs, (x_val, y_val), extra_callbacks)
    seconds = time.perf_counter() - started
    val_loss, val_acc, val_top5 = model.evaluate(
        x_val, models.targets(y_val, len(classes), params, model), batch_size=4096, verbose=0)
    model, calibration, val_proba = calibrate(model, x_val, y_val)
    summary = {
        "family": family,
        "classes": len(classes),
        "features": list(features),
        "val_accuracy": round(float(val_acc), 5),
        "val_top5": round(float(val_top5), 5),
        "val_loss": round(float(val_loss), 5),
        "epochs_run": len(history["loss"]),
        "best_epoch": int(np.argmin(history.get("val_mean_loss", history["val_loss"]))) + 1,
        "train_seconds": round(seconds, 1),
        "parameters": int(model.count_params()),
        **calibration,
    }
    return model, history, summary, val_proba


def train_final(family: str, params, train_frame, val_frame, classes, features: list[str],
                final_fit: str):
    """fit_calibrated(), then with final_fit = train+val refit(). Returns (the model to
    save, history, summary, the validation probabilities of the fit on train alone)."""
    model, history, summary, val_proba = fit_calibrated(family, params, train_frame, val_frame,
                                                        classes, features)
    summary["fit"] = final_fit
    if final_fit == "train+val":
        model = refit(family, params, summary,
                      training_rows(train_frame, val_frame, final_fit), classes, features)
    return model, history, summary, val_proba


def refit(family: str, params, summary: dict, rows: pd.DataFrame, classes,
          features: list[str]):
    """The family refitted on ``rows`` (train + validation) for the best epoch validation
    chose (``summary``, which gets the refit's rows and seconds), with its temperature."""
    from stages.model_files import Calibrated  # noqa: PLC0415

    x, y = features_and_labels(rows, classes, features)
    epochs = summary["best_epoch"]
    print(f"train {family}: refit on train+val ({len(x)} rows) for {epochs} epochs", flush=True)
    started = time.perf_counter()
    model, _ = fit_network(family, params, x, y, classes, features, epochs)
    summary["final_fit_seconds"] = round(time.perf_counter() - started, 1)
    summary["final_fit_rows"] = len(x)
    return Calibrated(model, summary["temperature"]) if summary["temperature"] != 1.0 else model


def calibrate(model, x_val: np.ndarray, y_val: np.ndarray):
    """Temperature-scale the model's probabilities on the validation split (see
    stages.calibration): (the model, or it wrapped with the scaling; report entries; its
    validation probabilities)."""
    from stages import calibration  # noqa: PLC0415
    from stages.model_files import Calibrated, predict_proba  # noqa: PLC0415

    proba = predict_proba(model, x_val)
    temperature = calibration.fit_temperature(proba, y_val)
    report = {"temperature": temperature,
              "val_ece_raw": round(calibration.expected_calibration_error(proba, y_val), 5)}
    if temperature != 1.0:
        model = Calibrated(model, temperature)
        proba = predict_proba(model, x_val)
    report["val_ece"] = round(calibration.expected_calibration_error(proba, y_val), 5)
    return model, report, proba


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family", choices=NETWORKS)
    parser.add_argument("--features", choices=FEATURE_SETS,
                        help="train on this feature set instead of param `features`")
    parser.add_argument("--name", help="save as models/NAME.keras (default: the family), "
                        "with its curve and report under the same name")
    args = parser.parse_args(argv)
    params = load_section(args.family)  # validate before any heavy import
    features = FEATURE_SETS[args.features or load_feature_set()]
    name = args.name or args.family
    final_fit = load_final_fit()
    quiet_tensorflow()
    classes = read_classes()
    train_frame, val_frame = read_labeled("train"), read_labeled("val")
    model, history, summary, val_proba = train_final(args.family, params, train_frame,
                                                     val_frame, classes, features, final_fit)
    # each file is written atomically, and only after training has finished
    write_csv(PLOTS_DIR / "train" / f"{name}.csv", learning_curves(history))
    write_json(REPORTS_DIR / "train" / f"{name}.json", summary)
    write_val_proba(name, val_proba)
    from stages.model_files import MISSING_MEMBER  # noqa: PLC0415
    from stages.models import MIN_FEATURES, accepts_missing  # noqa: PLC0415

    extra = {MISSING_MEMBER: {"min_features": MIN_FEATURES}} if accepts_missing(model) else {}
    fitted_on = training_rows(train_frame, val_frame, final_fit)
    ranges = feature_ranges(fitted_on[features].to_numpy("float64"), features)
    save_model(model, MODELS_DIR / f"{name}.keras", classes, features, ranges, extra)
    print(f"train {name} ({args.family}, {len(features)} features): "
          f"val accuracy {summary['val_accuracy']:.4f}, "
          f"{summary['epochs_run']} epochs, {summary['train_seconds']} s, "
          f"{summary['parameters']} parameters")


if __name__ == "__main__":
    main()
