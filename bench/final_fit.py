"""What ``final_fit: train+val`` is worth: ``python -m bench.final_fit``.

    python -m bench.final_fit [--families forest boosting] [--out bench/results]

Run in a repository after ``dvc repro`` (it reads data/labeled/ and the committed params).
For each tree family: the fit on train alone (validation chooses boosting's rounds and
each temperature) and the refit on train + validation with those, exactly as the train
stage does with ``final_fit: train+val`` (``stages.train_trees.train_final``); both scored
on the test split, with the difference's 95% paired-bootstrap interval over the test
recordings (``stages.evaluate.paired_bootstrap``). Writes OUT/final_fit.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from stages.common import FEATURE_SETS, label_indices, read_classes, read_labeled, training_rows
from stages.evaluate import paired_bootstrap
from stages.params import TREES, load_feature_set, load_section
from stages.ranking import top_class
from stages.split import recording_ids
from stages.train_trees import fit_calibrated, refit


def measure(family: str, splits: dict, classes: list[str], features: list[str]) -> dict:
    test = splits["test"]
    x_test, y_test = test[features].to_numpy("float32"), label_indices(test, classes)
    params = load_section(family)
    started = time.perf_counter()
    alone, summary, _ = fit_calibrated(family, params, splits["train"], splits["val"], classes,
                                       features)
    seconds = {"train": round(time.perf_counter() - started, 1)}
    # the stage's refit, reusing the fit on train alone (its rounds and temperature)
    both = training_rows(splits["train"], splits["val"], "train+val")
    final = refit(family, params, alone, summary, both, classes, features)
    seconds["train+val"] = summary["final_fit_seconds"]
    right = {fit: top_class(model.predict_proba(x_test)) == y_test
             for fit, model in (("train", alone), ("train+val", final))}
    gap = paired_bootstrap(right["train+val"], right["train"], recording_ids(test))
    return {"test_accuracy": {fit: round(float(r.mean()), 5) for fit, r in right.items()},
            "difference": gap, "seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", choices=TREES, default=list(TREES))
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    classes = read_classes()
    features = FEATURE_SETS[load_feature_set()]
    splits = {name: read_labeled(name) for name in ("train", "val", "test")}
    results = {"machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
               "families": {}}
    for family in args.families:
        results["families"][family] = measure(family, splits, classes, features)
        print(family, json.dumps(results["families"][family]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "final_fit.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
