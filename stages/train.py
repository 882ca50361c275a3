"""Stages train_softmax / train_mlp / train_lstm: ``python -m stages.train FAMILY``.

Reads data/labeled/{train,val}.parquet and classes.json, trains the family's
model with the settings in its params.yaml section, and writes
models/FAMILY.keras (class list inside), metrics/train/FAMILY.json and the
per-epoch learning curves (DVCLive) in plots/train/FAMILY/.
"""

from __future__ import annotations

import argparse
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from stages.common import (
    FEATURES,
    LABEL_COLUMN,
    METRICS_DIR,
    MODELS_DIR,
    PLOTS_DIR,
    UserError,
    atomic_dir,
    atomic_path,
    cli,
    quiet_tensorflow,
    read_classes,
    read_labeled,
    write_json,
)
from stages.params import FAMILIES, load_section

CLASSES_MEMBER = "classes.json"  # extra member in the .keras zip; load_model ignores it


def features_and_labels(frame: pd.DataFrame, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(frame[LABEL_COLUMN]) - set(index))
    if unknown:
        raise UserError(f"labels not in classes.json: {', '.join(unknown[:5])} (re-run merge_genres)")
    x = frame[FEATURES].to_numpy(dtype="float32")
    y = frame[LABEL_COLUMN].map(index).to_numpy(dtype="int32")
    return x, y


def save_model(model, path: Path, classes: list[str]) -> None:
    """Save atomically, with the class list stored inside the .keras file."""
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(CLASSES_MEMBER, json.dumps(classes))


def load_model(path: Path):
    """Load a saved model and its class list; a clear error when it is missing or broken."""
    import keras  # noqa: PLC0415

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: model file not found (train it: dvc repro)")
    try:
        with zipfile.ZipFile(path) as archive:
            classes = json.loads(archive.read(CLASSES_MEMBER))
        model = keras.models.load_model(path)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise UserError(f"{path}: not a model saved by this project ({exc})") from None
    return model, classes


def plot_learning_curves(history: dict, family: str, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    epochs = np.arange(1, len(history["loss"]) + 1)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, title in ((ax_loss, "loss", "loss"), (ax_acc, "accuracy", "accuracy")):
        ax.plot(epochs, history[key], label="train")
        ax.plot(epochs, history[f"val_{key}"], label="val")
        ax.set_xlabel("epoch")
        ax.set_title(f"{family}: {title}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


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


def train(family: str, params, train_frame, val_frame, classes, live_dir: Path | None = None,
          extra_callbacks=()):
    """Fit the family's model; return (model, history dict, summary dict)."""
    import keras  # noqa: PLC0415

    from stages import models  # noqa: PLC0415

    keras.utils.set_random_seed(params.seed)
    x_train, y_train = features_and_labels(train_frame, classes)
    x_val, y_val = features_and_labels(val_frame, classes)
    model = models.build(family, x_train, len(classes), params)
    steps = int(np.ceil(len(x_train) / params.batch_size))
    models.compile_model(model, params, steps)
    callbacks = [keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=params.patience, restore_best_weights=True),
        epoch_printer(params.epochs)]
    if live_dir is not None:
        from dvclive import Live  # noqa: PLC0415
        from dvclive.keras import DVCLiveCallback  # noqa: PLC0415

        live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=False)
        callbacks.append(DVCLiveCallback(live=live))
    callbacks.extend(extra_callbacks)
    started = time.perf_counter()
    fit = model.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=params.epochs,
                    batch_size=params.batch_size, callbacks=callbacks, verbose=0)
    seconds = time.perf_counter() - started
    history = {k: [float(v) for v in values] for k, values in fit.history.items()}
    val_loss, val_acc, val_top5 = model.evaluate(x_val, y_val, batch_size=4096, verbose=0)
    summary = {
        "family": family,
        "classes": len(classes),
        "val_accuracy": round(float(val_acc), 5),
        "val_top5": round(float(val_top5), 5),
        "val_loss": round(float(val_loss), 5),
        "epochs_run": len(history["loss"]),
        "best_epoch": int(np.argmin(history["val_loss"])) + 1,
        "train_seconds": round(seconds, 1),
        "parameters": int(model.count_params()),
    }
    return model, history, summary


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family", choices=FAMILIES)
    args = parser.parse_args(argv)
    params = load_section(args.family)  # validate before any heavy import
    quiet_tensorflow()
    classes = read_classes()
    train_frame, val_frame = read_labeled("train"), read_labeled("val")
    curves_dir = PLOTS_DIR / "train" / args.family
    with atomic_dir(curves_dir) as live_tmp:
        model, history, summary = train(args.family, params, train_frame, val_frame, classes,
                                        live_dir=live_tmp)
        plot_learning_curves(history, args.family, live_tmp / "curves.png")
        save_model(model, MODELS_DIR / f"{args.family}.keras", classes)
        write_json(METRICS_DIR / "train" / f"{args.family}.json", summary)
    print(f"train {args.family}: val accuracy {summary['val_accuracy']:.4f}, "
          f"{summary['epochs_run']} epochs, {summary['train_seconds']} s, "
          f"{summary['parameters']} parameters")


if __name__ == "__main__":
    main()
