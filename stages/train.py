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


def quiet_data(dataset):
    """``dataset`` with tf.data's autotuning off. An iterator's autotuning thread held its
    end for up to a few seconds, idle, and Keras makes new iterators every epoch (train and
    validation): the LSTM's epochs took 6.3-11.7 s with it, 6.1-8.4 s without, with the
    same batches and the same model (2 cores, 2026-11-30)."""
    import tensorflow as tf  # noqa: PLC0415

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def in_order(arrays, batch_size: int):
    """Arrays (or a tuple of them) in batches, in order: what Keras makes of them for
    validation and predict, with autotuning off (quiet_data)."""
    import tensorflow as tf  # noqa: PLC0415

    return quiet_data(tf.data.Dataset.from_tensor_slices(arrays).batch(batch_size))


def shuffled(x: np.ndarray, y: np.ndarray, batch_size: int):
    """The batches Keras' fit(x, y, batch_size, shuffle=True) trains on, with autotuning
    off (quiet_data): Keras' own adapter for arrays, so the same shuffles and the same
    model. The adapter is private Keras code (pinned version): where it is missing, the
    arrays themselves (same batches, autotuning on)."""
    try:
        from keras.src.trainers.data_adapters import get_data_adapter  # noqa: PLC0415

        adapter = get_data_adapter(x, y, batch_size=batch_size, shuffle=True)
        make = adapter.get_tf_dataset
    except Exception:  # noqa: BLE001 - private code: whatever breaks, the plain arrays
        return None
    adapter.get_tf_dataset = lambda: quiet_data(make())
    return adapter


def mean_monitor(model, x_val: np.ndarray, y_val: np.ndarray):
    """Adds val_loss / val_accuracy / val_top5 of the served model (the members' mean
    probabilities) to each epoch's logs, for early stopping, the learning curve and the
    epoch line: the ensemble's one validation pass an epoch (Keras' own would score the
    members, a second pass)."""
    import keras  # noqa: PLC0415

    batches = in_order(x_val, 4096)
    rows = np.arange(len(y_val))

    class MeanMonitor(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            proba = np.clip(model.predict(batches, verbose=0), 1e-7, 1.0)
            picked = proba[rows, y_val]
            if logs is not None:
                logs["val_loss"] = float(-np.log(picked).mean())
                logs["val_accuracy"] = float((proba.argmax(axis=1) == y_val).mean())
                # Keras' top-k rule: the true class counts when fewer than 5 score higher
                logs["val_top5"] = float(((proba > picked[:, None]).sum(axis=1) < 5).mean())

    return MeanMonitor()


def epoch_draw(n_rows: int, n_features: int, epoch: int, rate: float, features: list[str],
               seed: int, together_rate: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One epoch's row order and hidden values (True: shown as NaN), drawn from
    (seed, epoch): the same params give the same batches."""
    from stages.models import hidden_mask  # noqa: PLC0415

    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n_rows)
    return order, hidden_mask((n_rows, n_features), rate, features, rng, together_rate)


def masked_epoch(x: np.ndarray, y: np.ndarray, epoch: int, rate: float,
                 features: list[str], seed: int, together_rate: float = 0.0):
    """One epoch's training rows, shuffled and hidden as epoch_draw draws them: (x, y)."""
    order, hidden = epoch_draw(len(x), x.shape[1], epoch, rate, features, seed, together_rate)
    rows = x[order]  # a copy
    rows[hidden] = np.nan
    return rows, y[order]


MASK_BITS = 31  # hidden values travel as one int32 bit mask per row


def epoch_dataset(x: np.ndarray, y: np.ndarray, epochs: int, batch_size: int, draw):
    """Every epoch's batches in turn, as one tf.data stream (fit it with steps_per_epoch:
    Keras then keeps one iterator across epochs); ``draw(epoch)`` gives that epoch's
    (row order, hidden values), as epoch_draw does.

    Only the orders and a bit mask of hidden values per row are drawn up front, 8 bytes per
    row and epoch (a copy of the rows would be 60); each batch is gathered from x inside
    TensorFlow, so no Python runs while the network trains. A per-epoch Python generator of
    the same batches took 6.5-7.0 s an epoch against 4.1-4.6 s (MLP, the training split, 2 cores).
    """
    import tensorflow as tf  # noqa: PLC0415

    x = np.asarray(x, dtype=np.float32)
    n_rows, n_features = x.shape
    if n_features > MASK_BITS:
        raise ValueError(f"{n_features} features: at most {MASK_BITS} fit the hidden-value mask")
    powers = (1 << np.arange(n_features)).astype(np.int32)
    orders, masks = [], []
    for epoch in range(epochs):
        order, hidden = draw(epoch)
        orders.append(np.asarray(order, dtype=np.int32))
        masks.append((np.asarray(hidden, dtype=np.int32) * powers).sum(axis=1, dtype=np.int32))
    order, mask = tf.constant(np.concatenate(orders)), tf.constant(np.concatenate(masks))
    rows, labels = tf.constant(x), tf.constant(np.ascontiguousarray(y))
    bit, missing = tf.constant(powers), tf.constant(np.nan, tf.float32)
    steps = -(-n_rows // batch_size)

    def batch(step):
        epoch, k = step // steps, step % steps
        begin = epoch * n_rows + k * batch_size
        end = epoch * n_rows + tf.minimum((k + 1) * batch_size, n_rows)
        take = order[begin:end]
        hidden = tf.not_equal(tf.bitwise.bitwise_and(mask[begin:end, None], bit), 0)
        return tf.where(hidden, missing, tf.gather(rows, take)), tf.gather(labels, take)

    # with autotuning, the end of fit() also waited ~20 s (idle) after the last batch
    return quiet_data(tf.data.Dataset.range(epochs * steps).map(batch).prefetch(2))


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
                         monitor="val_loss", mode="min",
                         patience=params.patience, restore_best_weights=True)]
        if not ensemble:  # Keras validates in batches of the training batch size
            fit_options = {"validation_data": in_order(
                (x_val, models.targets(y_val, len(classes), params, fitted)),
                params.batch_size)}
    callbacks += [epoch_printer(epochs), *extra_callbacks]
    y_fit = models.targets(y, len(classes), params, fitted)
    if getattr(params, "feature_dropout", 0) > 0:  # the model learns to do without features
        def draw(epoch):
            return epoch_draw(len(x), x.shape[1], epoch, params.feature_dropout, list(features),
                              params.seed, params.popularity_dropout)

        batches = epoch_dataset(x, np.ascontiguousarray(y_fit), epochs, params.batch_size, draw)
        fit = fitted.fit(batches, epochs=epochs, steps_per_epoch=steps,
                         shuffle=False,  # drawn by epoch_draw
                         callbacks=callbacks, verbose=0, **fit_options)
    else:
        batches = shuffled(x, y_fit, params.batch_size)
        data = {"x": batches} if batches is not None else {
            "x": x, "y": y_fit, "batch_size": params.batch_size}
        fit = fitted.fit(**data, epochs=epochs, callbacks=callbacks, verbose=0, **fit_options)
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
        in_order((x_val, models.targets(y_val, len(classes), params, model)), 4096), verbose=0)
    model, calibration, val_proba = calibrate(model, x_val, y_val)
    summary = {
        "family": family,
        "classes": len(classes),
        "features": list(features),
        "val_accuracy": round(float(val_acc), 5),
        "val_top5": round(float(val_top5), 5),
        "val_loss": round(float(val_loss), 5),
        "epochs_run": len(history["loss"]),
        "best_epoch": int(np.argmin(history["val_loss"])) + 1,
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
        # what predict_proba(model, x_val) gives, without running the network again
        proba = calibration.apply_temperature(proba, temperature)
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
