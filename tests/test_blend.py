"""The blend: weights fitted on validation only, one artifact holding every member,
clear errors for a broken one, and the same probabilities wherever it is read."""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages.common import AUDIO_FEATURES, FEATURES, UserError, write_json, write_parquet
from stages.params import validate
from tests.conftest import REPO, make_tracks

MEMBERS = ["softmax", "forest", "boosting"]


@pytest.fixture(scope="module")
def blend_repo(tmp_path_factory):
    """A directory laid out like the repository after training: labeled splits, the class
    list and three small family models (the softmax untrained: only its wiring matters,
    on the 13 audio features, so members take different feature lists)."""
    from stages import models, trees
    from stages.model_files import family_file, save_model
    from stages.split import clean
    from stages.tf_setup import quiet_tensorflow

    quiet_tensorflow()
    root = tmp_path_factory.mktemp("blend_repo")
    frame, _ = clean(make_tracks(rows_per_genre=60))
    frame["label"] = frame["track_genre"]
    classes = sorted(frame["label"].unique())
    rng = np.random.default_rng(1)
    part = rng.integers(0, 3, len(frame))
    splits = {name: frame[part == i].reset_index(drop=True)
              for i, name in enumerate(("train", "val", "test"))}
    for name, split in splits.items():
        write_parquet(root / "data/labeled" / f"{name}.parquet", split)
    write_json(root / "data/labeled/classes.json", classes)
    write_json(root / "data/labeled/fold.json", {"fold": None})
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    y = {name: splits[name]["label"].map(classes.index).to_numpy() for name in splits}
    x = {name: splits[name][FEATURES].to_numpy("float32") for name in splits}
    for family, settings in (("forest", {"n_estimators": 5}),
                             ("boosting", {"max_rounds": 5, "learning_rate": 0.5})):
        model = trees.fit(family, validate(family, settings), x["train"], y["train"], x["val"],
                          y["val"], len(classes), 1)
        trees.save(model, root / family_file(family), classes, FEATURES)
    import keras

    keras.utils.set_random_seed(2)  # its untrained weights, whichever tests ran before
    softmax = models.build("softmax", splits["train"][AUDIO_FEATURES].to_numpy("float32"),
                           len(classes), validate("softmax", {}), AUDIO_FEATURES)
    save_model(softmax, root / family_file("softmax"), classes, AUDIO_FEATURES)
    return root, classes


def _set_blend_params(repo: Path, members, min_weight=0.0):
    import yaml

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["blend"] = {"members": list(members), "min_weight": min_weight}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))


def _run_blend(repo: Path, monkeypatch, members=MEMBERS, min_weight=0.0) -> dict:
    from stages import blend

    _set_blend_params(repo, members, min_weight)
    monkeypatch.chdir(repo)
    blend.main([])
    return json.loads((repo / "reports/blend.json").read_text())


@pytest.fixture
def repo(blend_repo, tmp_path):
    """A private copy, to change freely."""
    source, classes = blend_repo
    return shutil.copytree(source, tmp_path / "repo"), classes


def _relabel(path: Path, seed: int):
    frame = pd.read_parquet(path)
    frame["label"] = np.random.default_rng(seed).permutation(frame["label"].to_numpy())
    write_parquet(path, frame)


def test_weights_come_from_the_validation_split_only(repo, monkeypatch):
    repo, _ = repo
    first = _run_blend(repo, monkeypatch)
    blended = (repo / "models/blend.zip").read_bytes()
    assert sum(first["weights"].values()) == pytest.approx(1.0)
    assert set(first["validation"]) == {*MEMBERS, "blend"}
    _relabel(repo / "data/labeled/test.parquet", seed=5)  # only the test labels change
    assert _run_blend(repo, monkeypatch) == first
    assert (repo / "models/blend.zip").read_bytes() == blended
    _relabel(repo / "data/labeled/val.parquet", seed=5)  # the validation labels do count
    assert _run_blend(repo, monkeypatch)["weights"] != first["weights"]


def test_blend_probabilities_are_the_calibrated_weighted_mean_and_sum_to_one(repo, monkeypatch):
    from stages.calibration import apply_temperature
    from stages.model_files import family_file, load_model, predict_proba

    repo, classes = repo
    report = _run_blend(repo, monkeypatch)
    blend, blend_classes, features = load_model(repo / "models/blend.zip")
    assert blend_classes == classes and features == report["features"] == FEATURES
    kept = {name: w for name, w in report["weights"].items() if w > 0}
    assert blend.weights == pytest.approx(kept) and blend.temperature == report["temperature"]
    test = pd.read_parquet(repo / "data/labeled/test.parquet")
    proba = predict_proba(blend, test[FEATURES].to_numpy("float32"))
    assert proba.shape == (len(test), len(classes))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    by_hand = 0
    for name, weight in kept.items():  # each member reads its own features
        model, _, member_features = load_model(repo / family_file(name))
        by_hand = by_hand + weight * predict_proba(model, test[member_features].to_numpy("float32"))
    by_hand = apply_temperature(by_hand / by_hand.sum(axis=1, keepdims=True), report["temperature"])
    np.testing.assert_allclose(proba, by_hand, atol=1e-6)


def test_a_member_below_min_weight_is_left_out_of_the_file(repo, monkeypatch):
    from stages.model_files import family_file, load_model

    repo, _ = repo
    # the weakest member with min_weight 0 falls under a min_weight just above its weight
    # (not a fixed family: an untrained softmax may still earn weight by smoothing the trees)
    full = _run_blend(repo, monkeypatch, min_weight=0.0)["weights"]
    weakest = min((name for name, w in full.items() if w > 0), key=full.get)
    threshold = full[weakest] * 1.01
    assert threshold < max(full.values())
    report = _run_blend(repo, monkeypatch, min_weight=threshold)
    assert report["weights"][weakest] == 0.0
    assert all(w == 0 or w >= threshold for w in report["weights"].values())
    kept = {name for name, w in report["weights"].items() if w > 0}
    with zipfile.ZipFile(repo / "models/blend.zip") as archive:
        stored = {n for n in archive.namelist() if n.startswith("members/")}
    assert stored == {f"members/{family_file(name).name}" for name in kept}
    blend, _, features = load_model(repo / "models/blend.zip")
    assert set(blend.weights) == kept and weakest not in blend.weights
    # the blend takes what its members take: the trees need all 15 features
    assert features == (FEATURES if kept - {"softmax"} else AUDIO_FEATURES)


def _without(path: Path, dest: Path, member: str) -> Path:
    with zipfile.ZipFile(path) as old, zipfile.ZipFile(dest, "w") as new:
        for item in old.infolist():
            if item.filename != member:
                new.writestr(item, old.read(item.filename))
    return dest


def test_a_missing_member_is_one_clear_error_in_load_and_predict(repo, monkeypatch, tmp_path):
    from stages.model_files import load_model

    repo, _ = repo
    _run_blend(repo, monkeypatch)
    broken = _without(repo / "models/blend.zip", tmp_path / "broken.zip", "members/forest.npz")
    with pytest.raises(UserError) as excinfo:
        load_model(broken)
    assert str(excinfo.value) == (f"{broken}: blend member members/forest.npz is missing from "
                                  "the file (rebuild it: dvc repro blend)")
    rows = pd.read_parquet(repo / "data/labeled/test.parquet")[FEATURES].head(3)
    rows.to_csv(tmp_path / "songs.csv", index=False)
    out = subprocess.run([sys.executable, "-m", "stages.predict", str(broken),
                          str(tmp_path / "songs.csv")], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr == f"error: {excinfo.value}\n"


def test_a_member_of_another_class_list_is_one_clear_error(repo, tmp_path):
    from stages import trees
    from stages.model_files import family_file, load_model, save_blend

    repo, classes = repo
    other = tmp_path / "other.npz"
    forest = trees.load(repo / family_file("forest"))[0]
    trees.save(forest, other, [*classes[:-1], "jazz"], FEATURES)  # one class renamed
    path = tmp_path / "mixed.zip"
    save_blend(path, [("boosting", repo / family_file("boosting"), 0.5),
                      ("forest", other, 0.5)], classes, FEATURES, 1.0)
    with pytest.raises(UserError) as excinfo:
        load_model(path)
    assert str(excinfo.value) == (
        f"{path}: blend member members/forest.npz predicts another class list than the blend "
        "(4 classes, the blend 4): rebuild the blend from models of one run (dvc repro blend)")


def test_the_stage_names_a_missing_or_stale_family_file(repo, monkeypatch):
    from stages import blend, trees

    repo, classes = repo
    (repo / "models/boosting.npz").unlink()
    _set_blend_params(repo, MEMBERS)
    monkeypatch.chdir(repo)
    with pytest.raises(SystemExit) as excinfo:
        blend.main([])
    assert excinfo.value.code == 2
    _set_blend_params(repo, ["softmax", "forest"])
    forest = trees.load("models/forest.npz")[0]
    trees.save(forest, "models/forest.npz", ["a", "b", "c", "d"], FEATURES)
    with pytest.raises(UserError) as error:
        blend.blend(validate("blend", {"members": ["softmax", "forest"]}), classes,
                    pd.read_parquet("data/labeled/val.parquet"))
    assert str(error.value) == ("models/forest.npz: trained on another class list than "
                                "data/labeled/classes.json (4 classes, now 4): retrain it "
                                "(dvc repro)")


def test_a_network_member_with_a_damaged_class_list_is_one_clear_error(repo, monkeypatch):
    """The stage reads a member's class list from its file without loading it: a damaged
    one is refused there, naming the file."""
    from stages import blend

    repo, classes = repo
    path = repo / "models/softmax.keras"
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    entries["classes.json"] = json.dumps({"jazz": 1}).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    monkeypatch.chdir(repo)
    with pytest.raises(UserError) as error:
        blend.blend(validate("blend", {"members": ["softmax", "forest"]}), classes,
                    pd.read_parquet("data/labeled/val.parquet"))
    assert str(error.value) == ("models/softmax.keras: not a model saved by this project "
                                "(classes.json is not a list of class names)")


def test_predict_on_the_blend_gives_what_evaluate_scores(repo, monkeypatch, tmp_path):
    from stages import evaluate
    from stages.model_files import load_model, predict_proba

    repo, classes = repo
    _run_blend(repo, monkeypatch)
    report = evaluate.evaluate([*MEMBERS, "blend"], repo / "models")[0]
    test = pd.read_parquet(repo / "data/labeled/test.parquet")
    test[["track_id", *FEATURES]].sample(frac=1, axis=1, random_state=0).to_csv(
        tmp_path / "test.csv", index=False)  # columns in another order
    out = subprocess.run([sys.executable, "-m", "stages.predict", str(repo / "models/blend.zip"),
                          str(tmp_path / "test.csv"), "-k", str(len(classes))],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    table = pd.read_csv(pd.io.common.StringIO(out.stdout))
    assert round(float((table["genre_1"] == test["label"]).mean()), 5) == \
        report["families"]["blend"]["accuracy"]
    proba = predict_proba(load_model(repo / "models/blend.zip")[0],
                          test[FEATURES].to_numpy("float32"))
    for rank in range(len(classes)):
        index = [classes.index(g) for g in table[f"genre_{rank + 1}"]]
        np.testing.assert_allclose(table[f"prob_{rank + 1}"],
                                   proba[np.arange(len(test)), index], atol=6e-6)
    # the blend is compared with the best single family on validation
    comparison = report["comparison"]
    assert comparison["reference"] in MEMBERS and "blend" in comparison["models"]


def test_evaluate_reuses_a_members_probabilities_only_from_the_same_file(repo, monkeypatch):
    from stages import evaluate, trees
    from stages.model_files import family_file, load_model, predict_proba, same_member_files

    repo, classes = repo
    report = _run_blend(repo, monkeypatch)
    blend_path = repo / "models/blend.zip"
    paths = {family: repo / family_file(family) for family in MEMBERS}
    stored = [name for name, weight in report["weights"].items() if weight > 0]
    assert sorted(same_member_files(blend_path, paths)) == sorted(stored)
    # the forest is refitted after the blend was made: the blend keeps its own forest
    train = pd.read_parquet(repo / "data/labeled/train.parquet")
    refit = trees.fit("forest", validate("forest", {"n_estimators": 5, "seed": 7}),
                      train[FEATURES].to_numpy("float32"),
                      train["label"].map(classes.index).to_numpy(), None, None, len(classes), 1)
    trees.save(refit, paths["forest"], classes, FEATURES)
    assert "forest" not in same_member_files(blend_path, paths)
    scored = evaluate.evaluate([*MEMBERS, "blend"], repo / "models")[0]
    test = pd.read_parquet(repo / "data/labeled/test.parquet")
    blend, _, features = load_model(blend_path)
    x = test[features].to_numpy("float32")
    proba = predict_proba(blend, x)
    actual = test["label"].map(classes.index).to_numpy()
    assert scored["families"]["blend"]["accuracy"] == round(float(
        (proba.argmax(axis=1) == actual).mean()), 5)
    # reused probabilities give the same bits as predicting again
    known = {name: predict_proba(load_model(paths[name])[0], test[load_model(paths[name])[2]]
                                 .to_numpy("float32")) for name in ("softmax", "boosting")}
    assert np.array_equal(blend.predict_proba(x, known=known), proba)


def test_members_left_unloaded_are_checked_and_loaded_only_when_asked(repo, monkeypatch,
                                                                      tmp_path):
    """evaluate leaves a member unloaded when it has its probabilities: its class list is
    still checked at load, it is loaded if it must predict after all, and the answers
    are the same bits as a blend loaded whole."""
    from stages import model_files, trees
    from stages.model_files import family_file, load_model, predict_proba, save_blend

    repo, classes = repo
    _run_blend(repo, monkeypatch)
    path = repo / "models/blend.zip"
    x = pd.read_parquet(repo / "data/labeled/test.parquet")[FEATURES].to_numpy("float32")
    whole = predict_proba(load_model(path)[0], x)
    loads = []
    real_load = model_files.load_model
    monkeypatch.setattr(model_files, "load_model",
                        lambda p, *a, **k: loads.append(Path(p).name) or real_load(p, *a, **k))
    lazy = model_files.load_model(path, unloaded={"boosting"})[0]
    assert "boosting.npz" not in loads and lazy.weights["boosting"] > 0
    forest = trees.load(repo / family_file("forest"))[0]
    known = {"boosting": predict_proba(trees.load(repo / family_file("boosting"))[0], x)}
    assert np.array_equal(lazy.predict_proba(x, known=known), whole)
    assert "boosting.npz" not in loads
    assert np.array_equal(lazy.predict_proba(x), whole)  # asked after all: loaded now
    assert loads.count("boosting.npz") == 1 and not lazy.unloaded
    # a member of another class list is refused at load, unloaded or not
    other = tmp_path / "other.npz"
    trees.save(forest, other, [*classes[:-1], "jazz"], FEATURES)
    mixed = tmp_path / "mixed.zip"
    save_blend(mixed, [("boosting", repo / family_file("boosting"), 0.5),
                       ("forest", other, 0.5)], classes, FEATURES, 1.0)
    with pytest.raises(UserError, match="members/forest.npz predicts another class list"):
        load_model(mixed, unloaded={"forest"})


def test_a_published_tree_family_is_a_blend_of_one_with_its_probabilities(repo, tmp_path):
    from stages import publish
    from stages.model_files import family_file, load_model, predict_proba, read_features

    repo, classes = repo
    source = repo / family_file("boosting")
    published = tmp_path / "genre-classifier.keras"
    publish.write_published("boosting", source, published, classes, FEATURES,
                            {"taxonomy.json": {"genres": classes, "merges": []}})
    model, loaded_classes, features = load_model(published)
    assert loaded_classes == classes and features == read_features(published) == FEATURES
    x = pd.read_parquet(repo / "data/labeled/test.parquet")[FEATURES].to_numpy("float32")
    np.testing.assert_array_equal(predict_proba(model, x),
                                  predict_proba(load_model(source)[0], x).astype("float64"))
    from stages.model_files import read_member

    assert read_member(published, "taxonomy.json")["genres"] == classes


def test_fit_weights_finds_the_log_loss_minimum_on_the_simplex():
    from stages.blend import blend_log_loss, choose_weights

    rng = np.random.default_rng(0)
    picked = rng.uniform(0.05, 1, size=(500, 3))
    picked[:, 2] = 0.01  # a useless member
    weights = choose_weights(picked, 0.0)
    assert weights.min() >= 0 and weights.sum() == pytest.approx(1.0)
    assert weights[2] == 0.0
    # no point of a fine grid over the simplex does better
    grid = [np.array([a, 1 - a, 0.0]) for a in np.linspace(0, 1, 201)]
    assert blend_log_loss(weights, picked) <= min(blend_log_loss(w, picked) for w in grid) + 1e-9


def _members(rows=400, classes=6, seed=0):
    """Two members' probabilities: one weak and soft, one sharp and right 70% of the time
    (overconfident: the temperature changes what each is worth in the blend)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, rows)
    weak = np.exp(0.8 * np.eye(classes)[y] + rng.normal(0, 0.5, (rows, classes)))
    weak /= weak.sum(axis=1, keepdims=True)
    guess = np.where(rng.random(rows) < 0.7, y, rng.integers(0, classes, rows))
    sharp = np.exp(6.0 * np.eye(classes)[guess])
    sharp /= sharp.sum(axis=1, keepdims=True)
    return np.stack([weak, sharp]), y


def test_tempered_log_loss_gradient_matches_finite_differences():
    from stages.blend import tempered_log_loss

    stacked, y = _members()
    weights, temperature = np.array([0.3, 0.7]), 0.8
    loss, gradient = tempered_log_loss(weights, temperature, stacked, y, gradient=True)
    assert loss == pytest.approx(tempered_log_loss(weights, temperature, stacked, y))
    step = 1e-6
    numeric = [(tempered_log_loss(weights + step * np.eye(2)[i], temperature, stacked, y)
                - loss) / step for i in range(2)]
    numeric.append((tempered_log_loss(weights, temperature * np.exp(step), stacked, y)
                    - loss) / step)
    np.testing.assert_allclose(gradient, numeric, rtol=1e-4, atol=1e-6)


def test_weights_fitted_with_the_temperature_beat_every_grid_point():
    """The tempered blend's log loss at the fitted weights (and its best temperature) is
    no worse than at any point of a grid of weights and temperatures, and no worse than
    the weights fitted without the temperature."""
    from stages.blend import (choose_weights, fit_tempered_weights, tempered_log_loss,
                              true_class_probabilities)

    stacked, y = _members()
    picked = true_class_probabilities(list(stacked), y)
    untempered = choose_weights(picked, 0.0)
    tempered = choose_weights(picked, 0.0, stacked, y)
    assert tempered.sum() == pytest.approx(1.0) and tempered.min() >= 0
    temperatures = np.exp(np.linspace(np.log(0.05), np.log(20), 121))

    def best(weights):
        return min(tempered_log_loss(weights, t, stacked, y) for t in temperatures)

    grid = [np.array([a, 1 - a]) for a in np.linspace(0, 1, 101)]
    assert best(tempered) <= min(best(w) for w in grid) + 1e-4
    assert best(tempered) < best(untempered) - 1e-3  # here the temperature moves the weights
    # a start that is already the minimum stays (the fit never makes it worse)
    again = fit_tempered_weights(stacked, y, tempered)
    assert best(again) <= best(tempered) + 1e-9


def test_bench_table_shows_each_difference_with_its_interval():
    from bench.table import difference_cell

    comparison = {"reference": "boosting",
                  "models": {"blend": {"difference": 0.0166, "low": 0.0101, "high": 0.023},
                             "mlp": {"difference": -0.004, "low": -0.0093, "high": 0.0012}}}
    assert difference_cell("blend", comparison) == "+0.0166 [+0.0101, +0.0230]"
    assert difference_cell("mlp", comparison) == "-0.0040 [-0.0093, +0.0012]"
    assert difference_cell("boosting", comparison) == "best on val"
    assert difference_cell("mlp", None) is None  # a run from before the comparison


def _blend_with_a_masked_mlp(root: Path, classes: list[str], monkeypatch) -> dict:
    """An MLP that takes missing features (1 epoch), and the blend of it and the trees."""
    from stages import train
    from stages.common import read_labeled
    from stages.model_files import MISSING_MEMBER, family_file, save_model

    monkeypatch.chdir(root)
    params = validate("mlp", {"epochs": 1, "batch_size": 32, "hidden": [8], "embedding_dim": 2,
                              "feature_dropout": 0.2, "popularity_dropout": 0.5})
    mlp, _, _ = train.train("mlp", params, read_labeled("train"), read_labeled("val"), classes)
    save_model(mlp, root / family_file("mlp"), classes, FEATURES,
               extra={MISSING_MEMBER: {"min_features": 8}})
    return _run_blend(root, monkeypatch, ["forest", "boosting", "mlp"])


def test_a_row_with_a_missing_feature_is_answered_by_the_masked_member(repo, monkeypatch):
    """With a network that takes missing features among the members, the blend takes them
    too: such a row is the fallback member's answer alone, a complete row the blend's."""
    from stages.common import read_labeled
    from stages.model_files import (MISSING_MEMBER, family_file, load_model, predict_proba,
                                    read_member)

    root, classes = repo
    report = _blend_with_a_masked_mlp(root, classes, monkeypatch)
    assert report["fallback"] == "mlp"
    path = root / family_file("blend")
    assert read_member(path, MISSING_MEMBER) == {"min_features": 8}
    blend_model, _, features = load_model(path)
    x = read_labeled("test")[features].to_numpy("float32")[:12].copy()
    complete = predict_proba(blend_model, x)
    x[:6, features.index("time_signature")] = np.nan
    mixed = predict_proba(blend_model, x)
    assert np.allclose(mixed[6:], complete[6:], rtol=1e-5, atol=1e-7)  # (batch-size bits)
    member, _, _ = load_model(root / family_file("mlp"))
    assert np.allclose(mixed[:6], predict_proba(member, x[:6]))
    assert np.allclose(mixed.sum(axis=1), 1.0)


def test_evaluate_measures_what_missing_features_cost_the_blend_as_its_own_answers(
        repo, monkeypatch):
    """The blend answers a row with a gap by its fallback member: evaluate reuses that
    family's table, which must equal the blend's own answers with each set missing."""
    from stages import evaluate
    from stages.common import read_labeled
    from stages.model_files import MISSING_MEMBER, family_file, load_model, predict_proba

    root, classes = repo
    _blend_with_a_masked_mlp(root, classes, monkeypatch)
    report = evaluate.evaluate(["forest", "boosting", "mlp", "blend"], root / "models")[0]
    costs = report["missing_feature_accuracy"]
    assert sorted(costs) == ["blend", "mlp"]  # the trees take no missing features
    blend, _, features = load_model(root / family_file("blend"))
    test = read_labeled("test")
    x = test[features].to_numpy("float32")
    actual = test["label"].map(classes.index).to_numpy()
    proba = predict_proba(blend, x)
    direct = evaluate.missing_feature_accuracy(lambda rows: predict_proba(blend, rows), x,
                                               actual, features, proba)
    assert costs["blend"] == direct
    assert costs["blend"][""] == report["families"]["blend"]["accuracy"]
    assert {key for key in costs["mlp"] if key} == {key for key in direct if key}
    assert "popularity,explicit,tempo" in direct and "danceability" in direct
    # publish packs that table into the published file, and refuses a report without it
    from stages import publish
    from stages.common import TEST_PROBA_DIR, write_proba
    from stages.model_files import read_member

    write_json(root / "reports/taxonomy.json", {"genres": classes, "merges": []})
    write_proba(root / TEST_PROBA_DIR / "blend.npy", proba)
    publish.publish("blend", report, root / "models", root / "plots")
    packed = read_member(root / "models/genre-classifier.keras", MISSING_MEMBER)
    assert packed["test_accuracy"] == costs["blend"] and packed["min_features"] == 8
    with pytest.raises(UserError) as error:
        publish.publish("blend", {**report, "missing_feature_accuracy": {}}, root / "models",
                        root / "plots")
    assert str(error.value) == ("reports/evaluate.json: no missing-feature accuracy for blend, "
                                "which takes missing features: re-run evaluate (dvc repro)")


def _publish_inputs(root: Path, classes: list[str], monkeypatch) -> dict:
    """A repository as evaluate leaves it: the blend, evaluate's report and probabilities."""
    from stages import evaluate
    from stages.common import TEST_PROBA_DIR, write_proba

    _run_blend(root, monkeypatch)
    write_json(root / "reports/taxonomy.json", {"genres": classes, "merges": []})
    report, _, probas = evaluate.evaluate([*MEMBERS, "blend"], root / "models")
    for name, proba in probas.items():
        write_proba(root / TEST_PROBA_DIR / f"{name}.npy", proba)
    write_json(root / "reports/evaluate.json", report)
    return report


def test_publish_analyses_the_probabilities_evaluate_saved_and_loads_no_model(
        repo, monkeypatch):
    from stages import publish
    from stages.common import TEST_PROBA_DIR, write_proba

    root, classes = repo
    report = _publish_inputs(root, classes, monkeypatch)
    scored = publish.publish("boosting", report, root / "models", root / "plots")
    assert scored["accuracy"] == report["families"]["boosting"]["accuracy"]
    # probabilities that put every test row in its own class: publish scores the file
    actual = pd.read_parquet(root / "data/labeled/test.parquet")["label"].map(classes.index)
    write_proba(root / TEST_PROBA_DIR / "boosting.npy", np.eye(len(classes))[actual])
    assert publish.publish("boosting", report, root / "models", root / "plots")["accuracy"] == 1.0
    # the published blend, and no TensorFlow in the process that published it
    code = ("import sys; from stages import publish; publish.main([]); "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "False False"
    assert json.loads((root / "reports/published.json").read_text())["accuracy"] == \
        report["families"]["blend"]["accuracy"]


@pytest.mark.parametrize("damage, message", [
    ("shape", "data/test_proba/forest.npy: probabilities of shape ({rows}, {classes_less}), "
              "but the test split has {rows} rows and {classes} classes: re-run evaluate "
              "(dvc repro)"),
    ("gone", "data/test_proba/forest.npy: file not found (run evaluate: dvc repro)"),
])
def test_publish_refuses_test_probabilities_that_are_not_the_models(repo, monkeypatch, damage,
                                                                    message):
    from stages import publish
    from stages.common import TEST_PROBA_DIR

    root, classes = repo
    report = _publish_inputs(root, classes, monkeypatch)
    path = root / TEST_PROBA_DIR / "forest.npy"
    proba = np.load(path)
    if damage == "shape":  # another class list
        np.save(path, proba[:, 1:])
    else:
        path.unlink()
    with pytest.raises(UserError) as error:
        publish.publish("forest", report, root / "models", root / "plots")
    assert str(error.value) == message.format(rows=len(proba), classes=len(classes),
                                              classes_less=len(classes) - 1)


def test_predict_proba_in_passes_gives_the_same_bits(repo, monkeypatch):
    """model_files.predict_proba takes long inputs in passes of PROBA_CHUNK_ROWS rows (for
    speed): every model, the blend included, answers them with the same bits as in one."""
    from stages import model_files
    from stages.model_files import family_file, load_model, predict_proba

    root, _ = repo
    _run_blend(root, monkeypatch)
    x = pd.read_parquet(root / "data/labeled/test.parquet")[FEATURES].to_numpy("float32")
    x[::5, 3] = np.nan
    for name in ("softmax", "forest", "boosting", "blend"):
        model, _, features = load_model(root / family_file(name))
        rows = x[:, [FEATURES.index(f) for f in features]]
        whole = predict_proba(model, rows)
        with monkeypatch.context() as patch:
            patch.setattr(model_files, "PROBA_CHUNK_ROWS", 7)
            passes = predict_proba(model, rows)
        assert len(rows) > 7 * 3 and passes.dtype == whole.dtype, name
        np.testing.assert_array_equal(passes, whole, err_msg=name)


def test_with_a_fold_every_model_answers_at_the_merged_classes(repo, monkeypatch, tmp_path):
    """merge_genres.train_on = genres: the families learned genres; evaluate scores, publish
    packs and predict answers their probabilities summed per merged class."""
    from stages import evaluate, publish
    from stages.common import Fold
    from stages.model_files import load_model, predict_proba

    root, classes = repo
    unfolded = _publish_inputs(root, classes, monkeypatch)
    unfolded_proba = {name: np.load(root / "data/test_proba" / f"{name}.npy")
                      for name in ("boosting", "blend")}
    targets = ["acoustic+blues" if g in ("acoustic", "blues") else g for g in classes]
    fold = Fold(classes, targets)
    write_json(root / "data/labeled/fold.json", {"fold": fold.to_json()})
    report = _publish_inputs(root, classes, monkeypatch)
    test = pd.read_parquet(root / "data/labeled/test.parquet")
    merged = test["label"].map(dict(zip(classes, targets)))
    assert report["test_set"]["classes"] == 3 and report["fold"] == {"genres": 4, "classes": 3}
    for name in ("boosting", "blend"):
        folded = unfolded_proba[name] @ fold.matrix
        np.testing.assert_allclose(np.load(root / "data/test_proba" / f"{name}.npy"), folded)
        right = np.asarray(fold.classes)[folded.argmax(axis=1)] == merged
        assert report["families"][name]["accuracy"] == round(float(right.mean()), 5)
        assert report["families"][name]["accuracy"] >= unfolded["families"][name]["accuracy"]
    # the other taxonomies are still folded from what the models learned
    assert report.get("folded") == unfolded.get("folded")
    test[["track_id", *FEATURES]].to_csv(tmp_path / "test.csv", index=False)
    for name in ("blend", "boosting", "softmax"):
        scored = publish.publish(name, report, root / "models", root / "plots",
                                 tmp_path / "published.zip")
        assert scored["classes"] == 3 and scored["folded_from"] == 4
        assert scored["format"] == "blend"
        assert scored["accuracy"] == report["families"][name]["accuracy"], name
        model, answer_classes, features = load_model(tmp_path / "published.zip")
        assert answer_classes == fold.classes
        proba = predict_proba(model, test[features].to_numpy("float32"))
        np.testing.assert_allclose(proba.sum(axis=1), 1.0)
        np.testing.assert_allclose(proba, np.load(root / "data/test_proba" / f"{name}.npy"),
                                   atol=1e-6)
        out = subprocess.run([sys.executable, "-m", "stages.predict", str(tmp_path / "published.zip"),
                              str(tmp_path / "test.csv"), "-k", "1", "--use-popularity"],
                             cwd=REPO, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        table = pd.read_csv(pd.io.common.StringIO(out.stdout))
        assert set(table["genre_1"]) <= set(fold.classes)
        assert round(float((table["genre_1"] == merged).mean()), 5) == scored["accuracy"], name


def test_a_folded_blend_checks_its_fold_and_its_members(repo, monkeypatch, tmp_path):
    from stages.common import Fold
    from stages.model_files import fold_blend, load_model

    root, classes = repo
    _run_blend(root, monkeypatch)
    fold = Fold(classes, ["x", "x", "y", "y"])
    folded = tmp_path / "folded.zip"
    fold_blend(root / "models/blend.zip", folded, fold)
    assert load_model(folded)[1] == ["x", "y"]
    with pytest.raises(UserError, match="folds its answers already"):
        fold_blend(folded, tmp_path / "twice.zip", fold)

    def rewrite(path, name, change):
        with zipfile.ZipFile(folded) as old, zipfile.ZipFile(path, "w") as new:
            for item in old.infolist():
                data = old.read(item.filename)
                new.writestr(item, change(data) if item.filename == name else data)
        return path

    # its members learned other genres than the fold names
    other = rewrite(tmp_path / "other.zip", "blend.json", lambda data: json.dumps(
        {**json.loads(data), "fold": Fold([*classes[:3], "zydeco"], ["x", "x", "y", "y"])
         .to_json()}).encode())
    with pytest.raises(UserError, match="predicts another class list than the blend"):
        load_model(other)
    # a fold in a version-1 file, and a fold whose classes are not classes.json
    old = rewrite(tmp_path / "old.zip", "blend.json",
                  lambda data: json.dumps({**json.loads(data), "version": 1}).encode())
    with pytest.raises(UserError, match="this code reads 2 with a fold"):
        load_model(old)
    renamed = rewrite(tmp_path / "renamed.zip", "classes.json", lambda data: b'["x", "z"]')
    with pytest.raises(UserError, match="its fold does not give classes.json"):
        load_model(renamed)
