"""final_fit: train+val refits every family on train + validation with what validation chose
(epochs, rounds, temperature), never reads the test split, and leaves blend and evaluate
weighing and ranking by the fits on train alone."""


import numpy as np
import pandas as pd
import pytest
import yaml

from stages.common import FEATURES, UserError, label_indices, validation_proba, write_parquet
from stages.params import validate
from stages.tf_setup import quiet_tensorflow
from tests.conftest import REPO, make_tracks

quiet_tensorflow()

from stages import train, train_trees  # noqa: E402

CLASSES = ["acoustic", "blues", "chill", "dance"]
TINY = {"softmax": {"epochs": 3, "batch_size": 32, "patience": 1},
        "forest": {"n_estimators": 6},
        "boosting": {"max_rounds": 6, "max_leaf_nodes": 7, "min_samples_leaf": 5}}


@pytest.fixture(scope="module")
def splits():
    from stages.split import clean

    frame, _ = clean(make_tracks(rows_per_genre=45))
    frame["label"] = frame["track_genre"]
    part = np.arange(len(frame)) % 3
    return {name: frame[part == i].reset_index(drop=True)
            for i, name in enumerate(("train", "val", "test"))}


def _fit(family, splits, final_fit):
    params = validate(family, TINY[family])
    if family in train_trees.TREES:
        model, summary, val_proba = train_trees.train_final(
            family, params, splits["train"], splits["val"], CLASSES, FEATURES, final_fit, 1)
    else:
        model, _, summary, val_proba = train.train_final(
            family, params, splits["train"], splits["val"], CLASSES, FEATURES, final_fit)
    return model, summary, val_proba


@pytest.mark.parametrize("family", ["softmax", "forest", "boosting"])
def test_train_val_refits_with_what_validation_chose(family, splits):
    from stages.model_files import predict_proba

    alone, summary, val_proba = _fit(family, splits, "train")
    x_val = splits["val"][FEATURES].to_numpy("float32")
    # with final_fit = train the saved model is the one validation scored (tempered:
    # the probabilities calibration computed equal the calibrated model's, bit for bit)
    assert summary["temperature"] != 1.0
    assert np.array_equal(predict_proba(alone, x_val), val_proba)
    assert summary["fit"] == "train" and "final_fit_rows" not in summary

    final, final_summary, final_val_proba = _fit(family, splits, "train+val")
    assert final_summary["fit"] == "train+val"
    assert final_summary["final_fit_rows"] == len(splits["train"]) + len(splits["val"])
    # blend and evaluate get the fit on train alone's probabilities, bit for bit
    assert np.array_equal(final_val_proba, val_proba)
    assert final_summary["temperature"] == summary["temperature"]
    assert not np.array_equal(predict_proba(final, x_val), val_proba)  # it has seen val
    if family == "boosting":  # the rounds early stopping kept, no more
        assert final.n_trees == alone.n_trees
    if family != "softmax":
        assert final.temperature == alone.temperature


def test_network_refit_runs_the_best_epoch(splits, capsys):
    params = validate("softmax", {**TINY["softmax"], "epochs": 4, "patience": 4})
    _, history, summary, _ = train.train_final("softmax", params, splits["train"],
                                               splits["val"], CLASSES, FEATURES, "train+val")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    refit = lines[len(history["loss"]):]  # after the fit on train alone
    assert len(refit) == summary["best_epoch"]
    assert refit[-1].startswith(f"epoch {summary['best_epoch']}/{summary['best_epoch']}")


@pytest.fixture
def repo(splits, tmp_path, monkeypatch):
    """A repository layout with labeled train/val splits, no test split at all, and
    params with final_fit: train+val."""
    root = tmp_path / "repo"
    for name in ("train", "val"):
        write_parquet(root / "data/labeled" / f"{name}.parquet", splits[name])
    (root / "data/labeled/classes.json").write_text(str(CLASSES).replace("'", '"'))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update({"final_fit": "train+val", **{f: {**params[f], **TINY[f]} for f in TINY},
                   "blend": {"members": list(TINY), "min_weight": 0.0}})
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(root)
    return root


def test_stages_never_read_the_test_split(repo):
    from stages import blend

    for family in ("forest", "boosting"):
        train_trees.main([family])
    train.main(["softmax"])
    blend.main([])  # weighs by the fits on train alone: data/val_proba/*.npy
    assert not (repo / "data/labeled/test.parquet").exists()
    for name in (*TINY, "blend"):
        assert np.load(repo / f"data/val_proba/{name}.npy").shape[1] == len(CLASSES)
    report = yaml.safe_load((repo / "reports/train/forest.json").read_text())
    assert report["fit"] == "train+val"


def test_blend_weighs_the_validation_probabilities_it_is_given(repo):
    import json

    from stages import blend

    for family in ("forest", "boosting"):
        train_trees.main([family])
    train.main(["softmax"])
    y = label_indices(pd.read_parquet(repo / "data/labeled/val.parquet"), CLASSES)
    # forest's fit on train alone, as if it were right on every validation row
    np.save(repo / "data/val_proba/forest.npy", np.eye(len(CLASSES))[y] * 0.97 + 0.0075)
    blend.main([])
    weights = json.loads((repo / "reports/blend.json").read_text())["weights"]
    assert weights["forest"] > 0.99


def test_a_missing_or_wrong_validation_file_is_one_clear_error(repo):
    def never():
        raise AssertionError("a model fitted on train+val must not score validation")

    with pytest.raises(UserError, match=r"data/val_proba/mlp.npy: file not found: with "
                                        r"final_fit = train\+val"):
        validation_proba("mlp", 30, 4, "train+val", never)
    assert validation_proba("mlp", 30, 4, "train", lambda: "predicted") == "predicted"
    (repo / "data/val_proba").mkdir(parents=True)
    np.save(repo / "data/val_proba/mlp.npy", np.zeros((29, 4)))
    with pytest.raises(UserError, match=r"shape \(29, 4\).* 30 rows and 4 classes"):
        validation_proba("mlp", 30, 4, "train", never)


def test_final_fit_param_is_checked(tmp_path):
    from stages.params import load_final_fit

    path = tmp_path / "params.yaml"
    path.write_text("final_fit: train+test\n")
    with pytest.raises(UserError, match=r"final_fit = 'train\+test': must be one of train, "
                                        r"train\+val"):
        load_final_fit(path)
    path.write_text("model: blend\n")
    assert load_final_fit(path) == "train"


def test_bench_final_fit_scores_both_fits_on_the_test_split(repo, splits):
    from bench.final_fit import measure

    result = measure("forest", splits, CLASSES, FEATURES)  # repo: params with tiny forests
    accuracy = result["test_accuracy"]
    assert set(accuracy) == {"train", "train+val"}
    assert result["difference"]["difference"] == pytest.approx(
        accuracy["train+val"] - accuracy["train"], abs=1e-4)
    assert result["difference"]["low"] <= result["difference"]["high"]
