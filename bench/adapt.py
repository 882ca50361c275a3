"""The stand-in for adapting to someone's own labels: ``python -m bench.adapt``.

Built from the project's own data (data/labeled, the committed `recording` split):

1. 14 held-out genres (every 8th of the 114, from the 4th: ``held_out_genres``);
2. a base model trained without them: the repository's masked MLP (param section
   ``mlp``, stages.train) on the train/val splits minus those genres, with a reduced epoch
   budget (``--epochs``, default 6), saved once as models/bench-adapt-base.keras and
   reused while its held-out list and epochs match;
3. for k labelled tracks per held-out genre (10, 20, 50, 200, all), drawn from the
   train split (``--repeats`` draws for the small k), the adapted heads of stages.adapt
   and the from-scratch baselines are fitted and scored on the test split's tracks of
   those 14 genres (no recording is in both splits).

Prints the table, and writes it with ``--json PATH``. Targets (issue 18): adapted >=
from-scratch forest + 3 points at 20-50 tracks per class, never more than 0.5 point below
it with all labels.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from stages.common import FEATURES, LABELED_DIR, MODELS_DIR, cli, read_classes

BASE_FILE = MODELS_DIR / "bench-adapt-base.keras"
SIZES = (10, 20, 50, 200, None)  # None: every labelled track
TARGET_GAIN = 0.03  # adapted - forest at 20-50 tracks per class
TARGET_FLOOR = -0.005  # adapted - forest with all labels


def held_out_genres(classes: list[str]) -> list[str]:
    return sorted(classes)[3::8]


def train_base(classes: list[str], held_out: list[str], epochs: int, path: Path) -> None:
    """The masked MLP of params.yaml, trained on the splits without ``held_out``."""
    import dataclasses  # noqa: F401, PLC0415

    from stages.model_files import MISSING_MEMBER, save_model  # noqa: PLC0415
    from stages.models import MIN_FEATURES  # noqa: PLC0415
    from stages.params import load_section  # noqa: PLC0415
    from stages.tf_setup import quiet_tensorflow  # noqa: PLC0415
    from stages.train import train  # noqa: PLC0415
    from stages.common import feature_ranges  # noqa: PLC0415

    quiet_tensorflow()
    params = load_section("mlp").model_copy(update={"epochs": epochs})
    kept = [c for c in classes if c not in held_out]
    frames = {s: pd.read_parquet(LABELED_DIR / f"{s}.parquet") for s in ("train", "val")}
    frames = {s: f[f["label"].isin(kept)] for s, f in frames.items()}
    started = time.perf_counter()
    model, _, summary = train("mlp", params, frames["train"], frames["val"], kept, FEATURES)
    ranges = feature_ranges(frames["train"][FEATURES].to_numpy("float64"), FEATURES)
    save_model(model, path, kept, FEATURES, ranges,
               {MISSING_MEMBER: {"min_features": MIN_FEATURES},
                "bench-adapt.json": {"held_out": held_out, "epochs": epochs}})
    print(f"base: mlp without {len(held_out)} genres, {summary['epochs_run']} epochs, "
          f"val accuracy {summary['val_accuracy']:.4f} ({len(kept)} classes), "
          f"{time.perf_counter() - started:.0f} s -> {path}", flush=True)


def base_matches(path: Path, held_out: list[str], epochs: int) -> bool:
    from stages.model_files import read_member  # noqa: PLC0415

    if not path.is_file():
        return False
    return read_member(path, "bench-adapt.json") == {"held_out": held_out, "epochs": epochs}


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.adapt", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="the base MLP's epoch budget")
    parser.add_argument("--base-only", action="store_true", help="train the base model and stop")
    parser.add_argument("--repeats", type=int, default=3,
                        help="draws of the labelled tracks at each k below all (default 3)")
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    classes = read_classes()
    held_out = held_out_genres(classes)
    if not base_matches(BASE_FILE, held_out, args.epochs):
        train_base(classes, held_out, args.epochs, BASE_FILE)
    else:
        print(f"base: {BASE_FILE} (trained without {len(held_out)} genres, reused)")
    if args.base_only:
        return


if __name__ == "__main__":
    main()
