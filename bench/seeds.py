"""How much a network's test accuracy moves with its seed: ``python -m bench.seeds``.

    python -m bench.seeds [--families softmax mlp lstm] [--seeds 43 44] [--out bench/results]

Run in a repository after ``dvc repro`` (it reads data/labeled/, models/ and params.yaml).
A single-seed gap between two families can be the seed, not the family: this measures
each network family at the pipeline's own seed (its saved model, models/FAMILY.keras,
scored as it is) and refitted with each of ``--seeds`` (the stage's own fit on the training
split, ``stages.train.fit_calibrated``: early stopping and calibration on validation, the
params.yaml settings but the seed). Every fit is scored on the test split. Writes
OUT/seeds.json: per family each seed's validation and test accuracy, and the test
accuracy's mean, standard deviation (n - 1) and range; ``python -m bench.table --seeds``
prints it. With ``final_fit: train+val`` the saved models have seen validation, so this
refuses to run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from bench.workspace import shown_command

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results"
SEEDS = (43, 44)  # beside the pipeline's own seed (params.yaml: 42)


def spread(test_accuracy: list[float]) -> dict:
    values = np.asarray(test_accuracy, dtype=np.float64)
    return {"seeds": len(values), "mean": round(float(values.mean()), 5),
            "std": round(float(values.std(ddof=1)), 5) if len(values) > 1 else None,
            "min": round(float(values.min()), 5), "max": round(float(values.max()), 5)}


def measure(family: str, seeds: list[int], splits: dict, classes: list[str]) -> dict:
    from stages.common import MODELS_DIR, label_indices  # noqa: PLC0415
    from stages.model_files import load_model, predict_proba  # noqa: PLC0415
    from stages.params import load_section  # noqa: PLC0415
    from stages.ranking import top_class  # noqa: PLC0415
    from stages.train import fit_calibrated  # noqa: PLC0415

    params = load_section(family)

    def accuracy(model, features, split):
        frame = splits[split]
        proba = predict_proba(model, frame[features].to_numpy("float32"))
        return round(float((top_class(proba) == label_indices(frame, classes)).mean()), 5)

    saved, _, features = load_model(MODELS_DIR / f"{family}.keras")
    runs = [{"seed": params.seed, "source": f"models/{family}.keras",
             "val_accuracy": accuracy(saved, features, "val"),
             "test_accuracy": accuracy(saved, features, "test")}]
    for seed in seeds:
        started = time.perf_counter()
        model, _, summary, _ = fit_calibrated(
            family, params.model_copy(update={"seed": seed}), splits["train"], splits["val"],
            classes, features)
        runs.append({"seed": seed, "source": "refitted", "val_accuracy": summary["val_accuracy"],
                     "test_accuracy": accuracy(model, features, "test"),
                     "train_seconds": round(time.perf_counter() - started, 1)})
        print(f"bench.seeds {family} seed {seed}: {runs[-1]}", flush=True)
    return {"runs": runs, "test": spread([r["test_accuracy"] for r in runs]),
            "val": spread([r["val_accuracy"] for r in runs])}


def main(argv: list[str] | None = None) -> None:
    from stages.params import NETWORKS, load_final_fit  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m bench.seeds",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", choices=NETWORKS, default=list(NETWORKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if load_final_fit() != "train":
        raise SystemExit("bench.seeds: final_fit is not train: the saved models have seen "
                         "the validation split the refits are chosen on")
    from stages.common import read_classes, read_labeled  # noqa: PLC0415
    from stages.tf_setup import quiet_tensorflow  # noqa: PLC0415

    quiet_tensorflow()
    classes = read_classes()
    splits = {name: read_labeled(name) for name in ("train", "val", "test")}
    result = {"command": shown_command("bench.seeds", argv or sys.argv[1:]),
              "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "test_rows": len(splits["test"]), "families": {}}
    for family in args.families:
        result["families"][family] = measure(family, args.seeds, splits, classes)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "seeds.json").write_text(json.dumps(result, indent=1) + "\n")
        print(f"bench.seeds {family}: test {result['families'][family]['test']}", flush=True)


if __name__ == "__main__":
    main()
