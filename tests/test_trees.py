"""Tree families: fit, save/load round trip, determinism, and files that are not models."""

import pickle
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from stages import trees
from stages.common import FEATURES, UserError, write_npz
from stages.params import BoostingParams, ForestParams
from tests.conftest import make_tracks

GENRES = ("acoustic", "blues", "chill", "dance", "edm", "folk")
# Small and fast; 12 trees cross the forest's 10-tree fitting chunks.
TINY = {
    "forest": {"n_estimators": 12, "min_samples_leaf": 1},
    "boosting": {"max_leaf_nodes": 7, "min_samples_leaf": 5, "l2_regularization": 5.0,
                 "max_rounds": 30, "patience": 5},
}


@pytest.fixture(scope="module")
def data():
    from stages.split import clean

    frame, _ = clean(make_tracks(genres=GENRES, rows_per_genre=60))
    classes = sorted(frame["track_genre"].unique())
    x = frame[FEATURES].to_numpy("float32")
    y = frame["track_genre"].map({c: i for i, c in enumerate(classes)}).to_numpy("int64")
    return x[::2], y[::2], x[1::2], y[1::2], classes


def fit(family, data, **overrides):
    x_train, y_train, x_val, y_val, classes = data
    params = trees.PARAMS[family](**{**TINY[family], **overrides})
    return trees.fit(family, params, x_train, y_train, x_val, y_val, len(classes), n_jobs=1)


# boosting by LightGBM (the default) and by scikit-learn: one file layout, one walk
FITTED = {"forest": {}, "boosting": {}, "boosting-sklearn": {"library": "scikit-learn"}}


@pytest.fixture(scope="module", params=list(FITTED))
def fitted(request, data):
    family = request.param.split("-")[0]
    return family, fit(family, data, **FITTED[request.param])


def test_families_and_default_params():
    assert trees.TREE_FAMILIES == ("forest", "boosting")
    for family in trees.TREE_FAMILIES:
        params = trees.PARAMS[family]()
        assert params.seed == 42
        with pytest.raises(ValidationError, match="extra"):
            trees.PARAMS[family](n_tree=3)


def test_fit_gives_probabilities(fitted, data):
    family, model = fitted
    x_train, y_train, x_val, y_val, classes = data
    proba = model.predict_proba(x_val)
    assert proba.shape == (len(x_val), len(classes))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert (proba.argmax(axis=1) == y_val).mean() > 0.5  # separable synthetic genres
    assert model.predict_proba(x_val[:0]).shape == (0, len(classes))


def test_round_trip_keeps_probabilities_classes_and_features(fitted, data, tmp_path):
    family, model = fitted
    _, _, x_val, _, classes = data
    path = tmp_path / "models" / f"{family}.npz"
    trees.save(model, path, classes, FEATURES)
    loaded, loaded_classes, loaded_features = trees.load(path)
    assert loaded_classes == classes
    assert loaded_features == FEATURES
    assert loaded.family == family
    np.testing.assert_array_equal(loaded.predict_proba(x_val), model.predict_proba(x_val))
    assert sorted(p.name for p in path.parent.iterdir()) == [f"{family}.npz"]  # no temp left


def test_the_same_model_is_saved_as_the_same_bytes(fitted, data, tmp_path, monkeypatch):
    """Fixed member dates: a writer that stamped the time would give DVC a new file, and
    re-run every stage after it, on each run."""
    family, model = fitted
    for name, now in [("a.npz", 1.0e9), ("b.npz", 1.5e9)]:  # years apart
        monkeypatch.setattr(time, "time", lambda now=now: now)
        trees.save(model, tmp_path / name, data[-1], FEATURES, ranges=RANGES)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_write_npz_applies_its_compression_level(tmp_path):
    arrays = {"nodes": np.arange(200_000, dtype=np.int32) % 977,
              "names": np.array(["rock", "pop"])}
    sizes = {}
    for level in (1, 9):
        path = tmp_path / f"level{level}.npz"
        with open(path, "wb") as handle:
            write_npz(handle, arrays, level)
        sizes[level] = path.stat().st_size
        with np.load(path, allow_pickle=False) as archive:
            assert sorted(archive.files) == ["names", "nodes"]
            for name, value in arrays.items():
                np.testing.assert_array_equal(archive[name], value)
    assert sizes[9] < sizes[1]


def test_read_header_gives_the_lists_without_the_trees(fitted, data, tmp_path):
    path = _saved(fitted, data, tmp_path, ranges=RANGES, temperature=1.5)
    classes, features, metadata = trees.read_header(path)
    loaded, loaded_classes, loaded_features = trees.load(path)
    assert (classes, features) == (loaded_classes, loaded_features) == (data[-1], FEATURES)
    assert metadata == {"fitted_with": loaded.fitted_with, "temperature": 1.5,
                        "ranges": RANGES}
    # damaged trees: the header still reads (a class list needs no trees); load refuses
    broken = _with(path, tmp_path, "broken.npz", left=np.array([5], dtype=np.int32))
    assert trees.read_header(broken)[:2] == (data[-1], FEATURES)
    with pytest.raises(UserError, match="broken.npz: not a tree model saved by this project"):
        trees.load(broken)
    for bad, reason in [(_with(path, tmp_path, "v.npz", version=np.array(99)), "format version 99"),
                        (_with(path, tmp_path, "c.npz", classes=np.array([], dtype=str)),
                         "no 'classes' list")]:
        with pytest.raises(UserError, match=f"{bad.name}: not a tree model .*{reason}"):
            trees.read_header(bad)
    with pytest.raises(UserError, match="model file not found"):
        trees.read_header(tmp_path / "nope.npz")


def test_save_checks_names(fitted, data, tmp_path):
    family, model = fitted
    classes = data[-1]
    with pytest.raises(ValueError, match="class names"):
        trees.save(model, tmp_path / "m.npz", classes[:-1], FEATURES)
    with pytest.raises(ValueError, match="feature names"):
        trees.save(model, tmp_path / "m.npz", classes, FEATURES[:-1])
    assert not (tmp_path / "m.npz").exists()


def test_compiled_and_numpy_walks_agree(fitted, data, tmp_path):
    """The compiled tree walk (numba, fast) and the numpy walk (fallback) give
    identical probabilities, NaN routing included."""
    family, model = fitted
    assert model.walk is not None, model.walk_problem  # numba is pinned
    path = tmp_path / "m.npz"
    trees.save(model, path, data[-1], FEATURES)
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in trees.NODE_KEYS + trees.LEAF_KEYS[family]}
    plain = trees.FAMILY_CLASSES[family](arrays, model.n_classes, model.n_features,
                                         compiled=False)
    x = data[2].copy()
    x[::4, 3] = np.nan
    np.testing.assert_array_equal(plain.predict_proba(x), model.predict_proba(x))


def test_the_walk_uses_every_core_unless_capped_and_answers_the_same(fitted, data,
                                                                     monkeypatch):
    import os

    _, model = fitted
    # several blocks of rows, the last one short, NaN in some
    from stages.tree_walk import BITS_BLOCK, FOREST_BLOCK

    block = {"forest": FOREST_BLOCK, "boosting": BITS_BLOCK}[model.family]
    x = np.tile(data[2], (-(-3 * block // len(data[2])) + 1, 1))[: 3 * block + 3]
    x[::5, 2] = np.nan
    monkeypatch.delenv("SPOTIFY_GENRE_THREADS", raising=False)
    assert model.n_threads == (os.cpu_count() or 1)
    expected = trees.FAMILY_CLASSES[model.family](
        model.arrays, model.n_classes, model.n_features, compiled=False)
    expected.temperature = model.temperature
    expected = expected.predict_proba(x)
    for n_threads in ("1", "2", "3", "64"):  # 3: parts that are not whole blocks
        monkeypatch.setenv("SPOTIFY_GENRE_THREADS", n_threads)
        assert model.n_threads == int(n_threads)
        np.testing.assert_array_equal(model.predict_proba(x), expected)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
def test_one_walk_gives_both_sides_of_the_calibration(temperature, fitted, data, monkeypatch):
    """raw_scores() then probabilities() is predict_proba() bit for bit, over several
    batches, with NaN, at the temperature set after the walk (what train_trees uses to
    walk the validation rows once, before and after the temperature)."""
    _, model = fitted
    monkeypatch.setattr(trees, "COMPILED_ROWS", 7)  # several batches
    monkeypatch.setattr(trees, "PAIRS_PER_BATCH", 7 * model.n_trees)
    monkeypatch.setattr(model, "temperature", 1.0)
    x = data[2].copy()
    x[::4, 3] = np.nan
    raw = model.raw_scores(x)
    kept = raw.copy()
    model.temperature = temperature
    np.testing.assert_array_equal(model.probabilities(raw), model.predict_proba(x))
    np.testing.assert_array_equal(raw, kept)  # not overwritten: usable at another temperature


def test_wrong_input_width_is_refused(fitted, data):
    _, model = fitted
    with pytest.raises(ValueError, match=r"shape \(n, 15\)"):
        model.predict_proba(data[2][:, :14])


@pytest.mark.parametrize("name", list(FITTED))
def test_same_seed_same_probabilities(name, data):
    x_val = data[2]
    family = name.split("-")[0]
    first, second = fit(family, data, **FITTED[name]), fit(family, data, **FITTED[name])
    np.testing.assert_array_equal(first.predict_proba(x_val), second.predict_proba(x_val))


def test_forest_seed_matters(data):
    x_val = data[2]
    assert not np.array_equal(fit("forest", data, seed=1).predict_proba(x_val),
                              fit("forest", data, seed=2).predict_proba(x_val))


def test_forest_equals_scikit_learn_forest(data):
    """Chunked fitting + compact arrays give exactly scikit-learn's probabilities,
    NaN routing included."""
    from sklearn.ensemble import RandomForestClassifier

    x_train, y_train, x_val, _, classes = data
    params = ForestParams(n_estimators=23, min_samples_leaf=2, max_features=4, seed=7)
    model = trees.fit("forest", params, x_train, y_train, None, None, len(classes), n_jobs=1)
    reference = RandomForestClassifier(n_estimators=23, min_samples_leaf=2, max_features=4,
                                       random_state=7, n_jobs=1).fit(x_train, y_train)
    x = x_val.copy()
    x[::3, 4] = np.nan
    np.testing.assert_array_equal(model.predict_proba(x), reference.predict_proba(x))


def test_forest_leaf_class_out_of_range(data, tmp_path):
    saved = tmp_path / "f.npz"
    trees.save(fit("forest", data), saved, data[-1], FEATURES)
    with np.load(saved, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["leaf_class"] = arrays["leaf_class"].copy()
    arrays["leaf_class"][0] = len(data[-1])
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UserError, match="bad.npz: not a tree model .*leaf class"):
        trees.load(tmp_path / "bad.npz")


def test_forest_class_missing_from_training(data, tmp_path):
    """A class with no training rows gets probability 0, in its own column."""
    x_train, y_train, x_val, y_val, classes = data
    keep = y_train != 2
    params = ForestParams(**TINY["forest"])
    model = trees.fit("forest", params, x_train[keep], y_train[keep], x_val, y_val,
                      len(classes), n_jobs=1)
    proba = model.predict_proba(x_val)
    assert proba.shape[1] == len(classes) and not proba[:, 2].any()


def test_threshold_rounding_keeps_decisions():
    a = np.float32(0.1)
    b = np.nextafter(a, np.float32(1))
    midpoint = np.array([(np.float64(a) + np.float64(b)) / 2])
    down = trees._floor32(midpoint)[0]
    assert down == a and b > down


# --- files that are not models ----------------------------------------------------------


class _Boom:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker file
        return Path.touch, (self.marker,)


def _broken_files(tmp_path: Path, saved: Path) -> dict[str, Path]:
    files = {}

    def put(name: str, content: bytes) -> None:
        files[name] = tmp_path / name
        files[name].write_bytes(content)

    put("empty.npz", b"")
    put("text.npz", b"genre,prob\nrock,1\n")
    put("pickle.npz", pickle.dumps(_Boom(tmp_path / "executed")))
    whole = saved.read_bytes()
    put("truncated.npz", whole[: len(whole) // 2])
    np.savez(tmp_path / "foreign.npz", a=np.arange(3))
    files["foreign.npz"] = tmp_path / "foreign.npz"
    np.savez(tmp_path / "objects.npz", format=np.array(["x", None], dtype=object))
    files["objects.npz"] = tmp_path / "objects.npz"
    with zipfile.ZipFile(tmp_path / "model.keras", "w") as archive:
        archive.writestr("config.json", "{}")
    files["model.keras"] = tmp_path / "model.keras"
    with np.load(saved, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    for name, change in {
        "newer.npz": {"version": np.array(trees.FORMAT_VERSION + 1)},
        "family.npz": {"family": np.array("cart")},
        "no_classes.npz": {"classes": np.array([], dtype=str)},
    }.items():
        np.savez(tmp_path / name, **{**arrays, **change})
        files[name] = tmp_path / name
    return files


def _damaged_trees(tmp_path: Path, saved: Path) -> dict[str, Path]:
    with np.load(saved, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    internal = np.flatnonzero(arrays["feature"] >= 0)
    files = {}
    for name, key, edit in [
        ("child.npz", "right", lambda a: a.__setitem__(internal[0], 10**6)),
        ("loop.npz", "left", lambda a: a.__setitem__(internal[0], 0)),
        ("feature.npz", "feature", lambda a: a.__setitem__(internal[0], 15)),
        ("sizes.npz", "tree_nodes", lambda a: a.__setitem__(0, a[0] + 1)),
    ]:
        changed = dict(arrays)
        changed[key] = arrays[key].copy()
        edit(changed[key])
        np.savez(tmp_path / name, **changed)
        files[name] = tmp_path / name
    return files


def test_files_that_are_not_models_give_one_line_errors(fitted, data, tmp_path):
    family, model = fitted
    saved = tmp_path / "saved.npz"
    trees.save(model, saved, data[-1], FEATURES)
    files = {**_broken_files(tmp_path, saved), **_damaged_trees(tmp_path, saved)}
    for name, path in files.items():
        with pytest.raises(UserError) as excinfo:
            trees.load(path)
        message = str(excinfo.value)
        assert message.startswith(f"{path}: "), (name, message)
        assert "\n" not in message, (name, message)
    assert not (tmp_path / "executed").exists()  # the pickle was never run


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="model file not found"):
        trees.load(tmp_path / "nope.npz")


def test_boosting_equals_scikit_learn_up_to_the_best_round(data):
    """Same trees, same baseline, same order of additions and softmax as
    HistGradientBoostingClassifier, cut at the round with the best validation loss."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    x_train, y_train, x_val, y_val, classes = data
    model = fit("boosting", data, library="scikit-learn", learning_rate=0.5, max_rounds=100,
                patience=3)
    reference = HistGradientBoostingClassifier(
        learning_rate=0.5, max_iter=100, max_leaf_nodes=7, min_samples_leaf=5,
        l2_regularization=5.0, max_features=BoostingParams().feature_fraction,
        early_stopping=True, n_iter_no_change=3, random_state=42)
    reference.fit(x_train, y_train, X_val=x_val, y_val=y_val)
    best = int(np.argmax(reference.validation_score_))
    assert 1 <= model.rounds == best < reference.n_iter_  # it did stop early and cut back
    x = x_val.copy()
    x[::3, 4] = np.nan
    expected = list(reference.staged_predict_proba(x))[best - 1]
    np.testing.assert_allclose(model.predict_proba(x), expected, rtol=1e-12, atol=1e-15)


def _missing_types(text: str) -> set[str]:
    names = {0: "None", 1: "Zero", 2: "NaN"}
    return {names[(int(d) >> 2) & 3] for tree in trees._model_text_trees(text)
            for d in tree.get("decision_type", "").split()}


def test_boosting_equals_lightgbm_up_to_the_best_round(data):
    """LightGBM's trees, converted: its probabilities at its best validation round, NaN
    included both where training saw NaN (NaN takes the split's default side) and where
    it did not (NaN is compared as 0.0), and rows exactly at its thresholds."""
    import lightgbm

    x_train, y_train, x_val, y_val, classes = data
    x_train = x_train.copy()
    x_train[::5, 4] = np.nan  # feature 4's splits learn where NaN goes
    params = BoostingParams(**{**TINY["boosting"], "learning_rate": 0.5, "max_rounds": 100,
                               "patience": 3})
    model = trees.fit("boosting", params, x_train, y_train, x_val, y_val, len(classes), 1)
    settings = trees.lightgbm_settings(params, len(classes), 1)
    train_set = lightgbm.Dataset(x_train, y_train)
    history = {}
    reference = lightgbm.train(
        settings, train_set, num_boost_round=100,
        valid_sets=[lightgbm.Dataset(x_val, y_val, reference=train_set)],
        callbacks=[lightgbm.early_stopping(3, verbose=False),
                   lightgbm.record_evaluation(history)])
    best = reference.best_iteration
    losses = history["valid_0"]["multi_logloss"]
    assert 1 <= model.rounds == best < len(losses) < 100  # it did stop early and cut back
    assert losses[best - 1] == min(losses)
    assert _missing_types(reference.model_to_string(num_iteration=best)) == {"None", "NaN"}
    x = np.concatenate([x_val, model.probe_rows()])
    x[::3, 4] = np.nan
    x[1::4, :] = np.nan
    expected = reference.predict(x, num_iteration=best)
    np.testing.assert_allclose(model.predict_proba(x), expected, rtol=1e-12, atol=1e-15)


def _features_per_tree(model) -> list[set[int]]:
    """The features each tree of a fitted model splits on."""
    feature = model.arrays["feature"]
    return [set(feature[a:b][feature[a:b] >= 0].tolist())
            for a, b in zip(model.bounds, model.bounds[1:])]


@pytest.mark.parametrize("library", ["lightgbm", "scikit-learn"])
def test_feature_fraction_reaches_the_library(library, data):
    """LightGBM draws boosting.feature_fraction's share of the features per tree (one of
    15 here: each tree splits on one feature); scikit-learn per split (a different model)."""
    every = fit("boosting", data, library=library, feature_fraction=1.0)
    one = fit("boosting", data, library=library, feature_fraction=1 / 15)
    used = _features_per_tree(one)
    assert max(len(f) for f in _features_per_tree(every)) > 1
    if library == "lightgbm":
        assert max(len(f) for f in used) == 1 and len(set().union(*used)) > 1
    else:
        assert not np.array_equal(one.predict_proba(data[2]), every.predict_proba(data[2]))


def test_a_lightgbm_round_without_a_split_converts(data):
    x_train, y_train, _, _, classes = data
    params = BoostingParams(**{**TINY["boosting"], "min_samples_leaf": len(x_train)})
    model = trees.fit("boosting", params, x_train, y_train, None, None, len(classes), 1)
    assert model.n_trees == len(classes) and (model.arrays["tree_nodes"] == 1).all()
    proba = model.predict_proba(data[2])  # the class shares: the same for every row
    np.testing.assert_allclose(proba, proba[:1].repeat(len(proba), axis=0))
    np.testing.assert_allclose(proba[0], np.bincount(y_train) / len(y_train), rtol=1e-6)


@pytest.mark.parametrize("decision, match", [(1, "categorical"), (4, "zero-as-missing")])
def test_lightgbm_splits_it_cannot_represent_are_refused(decision, match, data):
    import lightgbm

    x_train, y_train, _, _, classes = data
    params = BoostingParams(**{**TINY["boosting"], "max_rounds": 2})
    booster = lightgbm.train(trees.lightgbm_settings(params, len(classes), 1),
                             lightgbm.Dataset(x_train, y_train), num_boost_round=2)
    text = booster.model_to_string()
    trees.lightgbm_arrays(text, len(classes))  # as it is: converts
    changed = text.replace("decision_type=", f"decision_type={decision} ", 1)
    with pytest.raises(ValueError, match=match):
        trees.lightgbm_arrays(changed, len(classes))
    with pytest.raises(ValueError, match="not a whole number of rounds"):
        trees.lightgbm_arrays(text, len(classes) + 1)


def test_without_lightgbm_the_fit_is_one_clear_error(data, monkeypatch):
    monkeypatch.setitem(sys.modules, "lightgbm", None)  # import lightgbm: ImportError
    with pytest.raises(UserError) as excinfo:
        fit("boosting", data)
    message = str(excinfo.value)
    assert message.startswith("boosting.library = lightgbm: LightGBM cannot be imported")
    assert "set boosting.library: scikit-learn" in message and "\n" not in message
    assert fit("boosting", data, library="scikit-learn").fitted_with.startswith("scikit-learn")


@pytest.mark.parametrize("library", ["lightgbm", "scikit-learn"])
def test_boosting_needs_every_class_in_training(library, data):
    x_train, y_train, x_val, y_val, classes = data
    keep = y_train != 2
    params = BoostingParams(**TINY["boosting"], library=library)
    with pytest.raises(UserError, match="all 6 classes"):
        trees.fit("boosting", params, x_train[keep], y_train[keep], x_val, y_val, len(classes))


@pytest.mark.parametrize("library", ["lightgbm", "scikit-learn"])
def test_boosting_without_a_validation_split_fits_every_round(library, data):
    x_train, y_train, x_val, _, classes = data
    params = BoostingParams(**{**TINY["boosting"], "max_rounds": 4, "library": library})
    model = trees.fit("boosting", params, x_train, y_train, None, None, len(classes), n_jobs=1)
    assert model.n_trees == 4 * len(classes)  # a refit for the rounds an earlier fit chose
    with pytest.raises(ValueError, match="validation split needs both"):
        trees.fit("boosting", params, x_train, y_train, x_val, None, len(classes))


def test_unknown_family(data):
    x_train, y_train, x_val, y_val, classes = data
    with pytest.raises(UserError, match="unknown tree family 'cart'"):
        trees.fit("cart", None, x_train, y_train, x_val, y_val, len(classes))


def test_damaged_boosting_file(data, tmp_path):
    model = fit("boosting", data)
    saved = tmp_path / "b.npz"
    trees.save(model, saved, data[-1], FEATURES)
    with np.load(saved, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    for name, key, value in [
        ("values.npz", "leaf_value", arrays["leaf_value"][:-1]),
        ("inf.npz", "leaf_value", np.where(np.arange(len(arrays["leaf_value"])) == 0, np.inf,
                                           arrays["leaf_value"])),
        ("baseline.npz", "baseline", arrays["baseline"][:-1]),
        ("rounds.npz", "classes", arrays["classes"][:-1]),
    ]:
        np.savez(tmp_path / name, **{**arrays, key: value})
        with pytest.raises(UserError, match=f"{name}: not a tree model"):
            trees.load(tmp_path / name)


# --- the compiled walk: trusted only after it answers as the numpy walk does ---------------


def _saved(fitted, data, tmp_path, **metadata) -> Path:
    family, model = fitted
    path = tmp_path / f"{family}.npz"
    trees.save(model, path, data[-1], FEATURES, **metadata)
    return path


def _numpy_answer(path: Path, x: np.ndarray) -> np.ndarray:
    return trees.load(path, compiled=False)[0].predict_proba(x)


def _rows_with_nan(data) -> np.ndarray:
    x = data[2].copy()
    x[::4, 3] = np.nan
    return x


def test_probe_rows_take_both_sides_of_the_thresholds_and_nan(fitted):
    _, model = fitted
    probe = model.probe_rows()
    assert probe.shape == (trees.PROBE_ROWS + 2, 15) and probe.dtype == np.float32
    assert np.isnan(probe[-2]).all() and np.isnan(probe[-1]).any()
    inner = model.arrays["feature"] >= 0
    used = np.unique(model.arrays["feature"][inner])
    for f in used:
        thresholds = model.arrays["threshold"][inner & (model.arrays["feature"] == f)]
        on = np.isin(probe[:-2, f], thresholds)
        above = np.isin(np.nextafter(probe[:-2, f], np.float32(-np.inf)), thresholds)
        assert on.any() and above.any() and (on | above).all(), f
    np.testing.assert_array_equal(model.probe_rows(), probe)  # deterministic


def test_missing_compiled_walk_means_numpy(fitted, data, tmp_path, monkeypatch, capsys):
    path = _saved(fitted, data, tmp_path)
    x = _rows_with_nan(data)
    expected = _numpy_answer(path, x)
    # numba not installed (or the walk module failing to import, e.g. nowhere to cache)
    monkeypatch.setitem(sys.modules, "numba", None)
    monkeypatch.delitem(sys.modules, "stages.tree_walk", raising=False)
    assert trees._compiled_walk() is None
    model = trees.load(path)[0]
    assert model.walk is None and model.walk_problem == "is not available"
    np.testing.assert_array_equal(model.predict_proba(x), expected)
    err = capsys.readouterr().err
    assert "compiled tree walk (numba) is not available" in err and err.count("\n") == 1


def _replace_walk(monkeypatch, **kernels):
    """The compiled walk with some of its functions replaced by kernels[name](real)."""
    import types

    from stages import tree_walk

    fake = types.SimpleNamespace(**{name: getattr(tree_walk, name) for name in
                                    ("node_layout", "bit_layout", "run", "boosting_sums",
                                     "boosting_bit_sums", "split_halves", "forest_sums")})
    for name, make in kernels.items():
        setattr(fake, name, make(getattr(tree_walk, name)))
    monkeypatch.setattr(trees, "_compiled_walk", lambda: fake)


def _wrong_signature(real):
    def kernel(x, feature, missing_left):  # too few arguments
        raise AssertionError("not reached")
    return kernel


def _wrong_sums(real):
    def kernel(*args):
        real(*args)
        out, start, stop = args[-3:]
        out[start:stop] = out[start:stop][::-1]  # a silently different answer
    return kernel


def _fails_on_large_inputs(real):
    def kernel(x, *rest):
        if len(x) > trees.PROBE_ROWS + 2:  # passes the probe, fails when predicting
            raise RuntimeError("changed behaviour")
        real(x, *rest)
    return kernel


def _wrong_without_nan(real):
    def kernel(x, *rest):
        real(x, *rest)
        out, start, stop = rest[-3:]
        if not np.isnan(x[start:stop]).any():  # right only where a NaN takes the slow path
            out[start:stop] = out[start:stop][::-1]
    return kernel


def _broken_layout(real):
    def node_layout(arrays, bounds):
        layout = real(arrays, bounds)
        layout["depths"] = layout["depths"] - 1  # stops one level short
        return layout
    return node_layout


def _broken_bit_layout(real):
    def bit_layout(arrays, layout, bounds):
        bits = real(arrays, layout, bounds)
        bits["mask"] = bits["mask"] << np.uint64(1)  # every split clears the wrong leaves
        return bits
    return bit_layout


@pytest.mark.parametrize("case", ["signature", "answers", "answers without NaN", "layout",
                                  "late failure"])
def test_any_failure_of_the_compiled_walk_means_numpy(case, fitted, data, tmp_path,
                                                      monkeypatch, capsys):
    path = _saved(fitted, data, tmp_path)
    x = _rows_with_nan(data)
    expected = _numpy_answer(path, x)
    kernel = {"signature": _wrong_signature, "answers": _wrong_sums,
              "answers without NaN": _wrong_without_nan,
              "late failure": _fails_on_large_inputs}.get(case)
    if kernel:
        _replace_walk(monkeypatch, boosting_sums=kernel, boosting_bit_sums=kernel,
                      forest_sums=kernel)
    else:
        _replace_walk(monkeypatch, node_layout=_broken_layout, bit_layout=_broken_bit_layout)
    model = trees.load(path)[0]
    if case == "late failure":
        assert model.walk is not None  # the probe passed
    else:
        assert model.walk is None and model.walk_problem  # the loader's probe caught it
    np.testing.assert_array_equal(model.predict_proba(x), expected)
    assert model.walk is None
    err = capsys.readouterr().err
    assert err.count("using the numpy walk") == 1 and err.endswith("\n")


def test_a_walk_that_agrees_is_used(fitted, data, tmp_path):
    model = trees.load(_saved(fitted, data, tmp_path))[0]
    assert model.walk is not None and model.walk_problem is None


# --- what the file records ----------------------------------------------------------------


def _library_version(model) -> str:
    import lightgbm
    import sklearn

    if model.family == "boosting" and model.fitted_with.startswith("lightgbm"):
        return f"lightgbm {lightgbm.__version__}"
    return f"scikit-learn {sklearn.__version__}"


def test_file_records_the_library_that_fitted_it(fitted, data, tmp_path, monkeypatch):
    family, model = fitted
    assert model.fitted_with == _library_version(model)
    path = _saved(fitted, data, tmp_path)
    with np.load(path, allow_pickle=False) as archive:
        assert archive["fitted_with"].item() == model.fitted_with
    # a model from another version loads, after the probe of the compiled walk
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    np.savez(tmp_path / "other.npz", **{**arrays, "fitted_with": np.array("scikit-learn 0.99")})
    probes = []
    real_check = trees._Trees._check_walk
    monkeypatch.setattr(trees._Trees, "_check_walk", lambda self: probes.append(
        self.fitted_with) or real_check(self))
    loaded = trees.load(tmp_path / "other.npz")[0]
    assert probes == ["scikit-learn 0.99"] and loaded.fitted_with == "scikit-learn 0.99"
    np.testing.assert_array_equal(loaded.predict_proba(data[2]), model.predict_proba(data[2]))


@pytest.mark.parametrize("family, library", [("forest", "scikit-learn"),
                                             ("boosting", "lightgbm"),
                                             ("boosting", "scikit-learn")])
def test_train_summary_reports_the_library_that_fitted_it(family, library, data):
    import pandas as pd

    from stages import train_trees

    x_train, y_train, x_val, y_val, classes = data
    frame = lambda x, y: pd.DataFrame(x, columns=FEATURES).assign(  # noqa: E731
        label=np.asarray(classes)[y])
    params = trees.PARAMS[family](**TINY[family],
                                  **({"library": library} if family == "boosting" else {}))
    model, summary = train_trees.train(family, params, frame(x_train, y_train),
                                       frame(x_val, y_val), classes, FEATURES, n_jobs=1)
    assert summary["fitted_with"] == model.fitted_with == _library_version(model)
    assert summary["fitted_with"].startswith(library + " ")


def test_files_written_before_the_metadata_still_load(fitted, data, tmp_path):
    family, model = fitted
    path = _saved(fitted, data, tmp_path)
    with np.load(path, allow_pickle=False) as archive:
        old = {k: archive[k] for k in archive.files
               if k not in ("fitted_with", "temperature", "ranges", "range_features")}
    np.savez(tmp_path / "old.npz", **old)
    loaded = trees.load(tmp_path / "old.npz")[0]
    assert (loaded.fitted_with, loaded.temperature, loaded.ranges) == (None, 1.0, None)
    np.testing.assert_array_equal(loaded.predict_proba(data[2]), model.predict_proba(data[2]))
    # before LightGBM, files named only the scikit-learn version
    np.savez(tmp_path / "older.npz", **old, sklearn_version=np.array("1.5.2"))
    assert trees.load(tmp_path / "older.npz")[0].fitted_with == "scikit-learn 1.5.2"


def _with(path: Path, tmp_path: Path, name: str, **change) -> Path:
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays.update(change)
    np.savez(tmp_path / name, **arrays)
    return tmp_path / name


@pytest.mark.parametrize("key, value", [
    ("leaf_class", -1), ("leaf_nnz", -1), ("leaf_count", -1), ("tree_nodes", -1),
    ("feature", -2), ("left", -5), ("right", -(10**6)),
])
def test_negative_indices_give_the_one_line_error(key, value, data, tmp_path):
    """Signed arrays in a crafted file: every index is range-checked, negative ones too."""
    path = tmp_path / "f.npz"
    trees.save(fit("forest", data), path, data[-1], FEATURES)
    with np.load(path, allow_pickle=False) as archive:
        signed = archive[key].astype(np.int64)
        internal = np.flatnonzero(archive["feature"] >= 0)
    signed[internal[0] if key in ("feature", "left", "right") else 0] = value
    bad = _with(path, tmp_path, "bad.npz", **{key: signed})
    with pytest.raises(UserError) as excinfo:
        trees.load(bad)
    message = str(excinfo.value)
    assert message.startswith(f"{bad}: not a tree model saved by this project (")
    assert message.endswith(")") and "\n" not in message


@pytest.mark.parametrize("check_nodes", [7, 1 << 20])
def test_a_child_in_the_next_tree_is_refused_wherever_the_checked_slices_end(
        check_nodes, fitted, data, tmp_path, monkeypatch):
    """The file is checked a slice of nodes at a time: a slice boundary inside a tree (7)
    or none (2**20) must not change which children are in their tree."""
    monkeypatch.setattr(trees, "CHECK_NODES", check_nodes)
    path = _saved(fitted, data, tmp_path)
    np.testing.assert_array_equal(trees.load(path)[0].predict_proba(data[2]),
                                  fitted[1].predict_proba(data[2]))
    with np.load(path, allow_pickle=False) as archive:
        first_tree = int(archive["tree_nodes"][0])
        last_split = int(np.flatnonzero(archive["feature"][:first_tree] >= 0)[-1])
        right = archive["right"].astype(np.int64)
    right[last_split] = first_tree - last_split  # the next tree's root: a node, not its tree's
    bad = _with(path, tmp_path, "next_tree.npz", right=right)
    with pytest.raises(UserError, match="right child out of range"):
        trees.load(bad)


def test_unsigned_indices_beyond_int64_are_refused(data, tmp_path):
    path = tmp_path / "f.npz"
    trees.save(fit("forest", data), path, data[-1], FEATURES)
    with np.load(path, allow_pickle=False) as archive:
        huge = archive["leaf_class"].astype(np.uint64)
    huge[0] = np.iinfo(np.uint64).max  # -1 once read as int64
    with pytest.raises(UserError, match="not a tree model .*leaf_class out of range"):
        trees.load(_with(path, tmp_path, "bad.npz", leaf_class=huge))


# --- max_features against the feature set -------------------------------------------------


def test_max_features_must_fit_the_feature_set():
    from stages.train_trees import check_fits_features

    check_fits_features("forest", ForestParams(max_features=15), "all")
    check_fits_features("forest", ForestParams(max_features=13), "audio")
    with pytest.raises(UserError) as excinfo:
        check_fits_features("forest", ForestParams(max_features=15), "audio")
    assert str(excinfo.value) == ("params.yaml: forest.max_features = 15: more than the 13 "
                                  "features of features = audio (at most 13)")


def test_train_trees_refuses_max_features_before_reading_data(in_tmp_repo, capsys):
    import yaml

    from stages import train_trees

    params = yaml.safe_load((in_tmp_repo / "params.yaml").read_text())
    params["features"] = "audio"
    params["forest"]["max_features"] = 15
    (in_tmp_repo / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit) as excinfo:  # no data here: the check comes first
        train_trees.main(["forest"])
    assert excinfo.value.code == 2
    assert capsys.readouterr().err == ("error: params.yaml: forest.max_features = 15: more than "
                                       "the 13 features of features = audio (at most 13)\n")


def test_train_trees_fits_with_the_thread_limit(in_tmp_repo, monkeypatch):
    """SPOTIFY_GENRE_THREADS caps the fit as well as the tree walk (queued experiments
    or Dask workers sharing the cores); unset, the fit takes every core."""
    import os

    from stages import train_trees

    asked = []

    class Stop(Exception):
        pass

    def train_final(*args, n_jobs):
        asked.append(n_jobs)
        raise Stop

    monkeypatch.setattr(train_trees, "train_final", train_final)
    for name in ("read_classes", "read_labeled"):
        monkeypatch.setattr(train_trees, name, lambda *args: None)
    monkeypatch.setenv("SPOTIFY_GENRE_THREADS", "1")
    with pytest.raises(Stop):
        train_trees.main(["forest"])
    monkeypatch.delenv("SPOTIFY_GENRE_THREADS")
    with pytest.raises(Stop):
        train_trees.main(["boosting"])
    assert asked == [1, os.cpu_count() or 1]


def test_fit_refuses_more_features_per_split_than_it_is_given(data):
    x_train, y_train, x_val, y_val, classes = data
    params = ForestParams(n_estimators=2, max_features=14)
    with pytest.raises(UserError, match="forest.max_features = 14: more than the 13 features"):
        trees.fit("forest", params, x_train[:, :13], y_train, None, None, len(classes))


# --- optional metadata: feature ranges and temperature ------------------------------------

RANGES = {"danceability": (0.0, 0.98), "tempo": (0.0, 243.4), "duration_ms": (8586.0, 5.2e6)}


def test_ranges_round_trip(fitted, data, tmp_path):
    path = _saved(fitted, data, tmp_path, ranges=RANGES)
    loaded = trees.load(path)[0]
    assert loaded.ranges == RANGES
    assert trees.load(_saved(fitted, data, tmp_path))[0].ranges is None
    # re-saved without saying: a loaded model keeps its ranges
    trees.save(loaded, tmp_path / "again.npz", data[-1], FEATURES)
    assert trees.load(tmp_path / "again.npz")[0].ranges == RANGES


@pytest.mark.parametrize("ranges, match", [
    ({"bpm": (0.0, 1.0)}, "not one of the model's features"),
    ({"tempo": (200.0, 100.0)}, "not a finite min <= max"),
    ({"tempo": (0.0, float("nan"))}, "not a finite min <= max"),
])
def test_bad_ranges_are_refused_at_save(ranges, match, fitted, data, tmp_path):
    with pytest.raises(ValueError, match=match):
        _saved(fitted, data, tmp_path, ranges=ranges)


def test_damaged_ranges_or_temperature_give_the_one_line_error(fitted, data, tmp_path):
    path = _saved(fitted, data, tmp_path, ranges=RANGES)
    for name, change in {
        "shape.npz": {"ranges": np.zeros((2, 2))},
        "names.npz": {"range_features": np.array(["tempo", "tempo", "key"])},
        "order.npz": {"ranges": np.array([[1.0, 0.0]] * 3)},
        "zero.npz": {"temperature": np.array(0.0)},
        "nan.npz": {"temperature": np.array(np.nan)},
        "text.npz": {"temperature": np.array("hot")},
    }.items():
        bad = _with(path, tmp_path, name, **change)
        with pytest.raises(UserError) as excinfo:
            trees.load(bad)
        assert str(excinfo.value).startswith(f"{bad}: not a tree model saved by this project (")
        assert "\n" not in str(excinfo.value)


@pytest.mark.parametrize("temperature", [0, -1.0, float("inf"), float("nan")])
def test_temperature_must_be_positive_and_finite(temperature, fitted, data, tmp_path):
    with pytest.raises(ValueError, match="temperature"):
        _saved(fitted, data, tmp_path, temperature=temperature)


def test_temperature_one_is_bit_identical(fitted, data, tmp_path):
    _, model = fitted
    x = _rows_with_nan(data)
    loaded = trees.load(_saved(fitted, data, tmp_path, temperature=1.0))[0]
    assert loaded.temperature == 1.0
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))


@pytest.mark.parametrize("temperature", [0.5, 2.0, 7.5])
def test_temperature_softens_or_sharpens_without_changing_the_top_class(
        temperature, fitted, data, tmp_path):
    family, model = fitted
    x = _rows_with_nan(data)
    plain = model.predict_proba(x)
    path = _saved(fitted, data, tmp_path, temperature=temperature)
    tempered = trees.load(path)[0]
    assert tempered.temperature == temperature and tempered.walk is not None  # probe passed
    got = tempered.predict_proba(x)
    # the same through the numpy walk
    np.testing.assert_allclose(trees.load(path, compiled=False)[0].predict_proba(x), got,
                               rtol=1e-12, atol=1e-15)
    if family == "boosting":  # softmax(raw / T); log p is raw up to a per-row constant
        scaled = np.log(plain) / temperature
        expected = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    else:  # p ** (1/T), renormalised
        expected = plain ** (1 / temperature)
        assert (got[plain == 0] == 0).all() and (plain == 0).any()  # zeros stay zero
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(got.argmax(axis=1), plain.argmax(axis=1))
    # T > 1 flattens: the top class loses probability (keeps it where every class present
    # is tied); T < 1 sharpens
    change = (got.max(axis=1) - plain.max(axis=1)) * np.sign(temperature - 1)
    assert (change <= 1e-12).all() and (change < -1e-6).mean() > 0.5


def test_forest_temperature_far_below_one_does_not_underflow(data, tmp_path):
    model = fit("forest", data)
    path = tmp_path / "f.npz"
    trees.save(model, path, data[-1], FEATURES, temperature=1e-3)
    got = trees.load(path)[0].predict_proba(data[2])
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got.argmax(axis=1), model.predict_proba(data[2]).argmax(axis=1))


def test_both_walks_give_the_same_bits_with_many_classes():
    """With many classes the softmax's row sums depend on the memory layout of the raw
    scores (numpy sums a contiguous row pairwise): both walks must use one layout, or the
    load-time probe sees a disagreement and falls back to the slow walk."""
    from stages import trees

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 4)).astype("float32")
    y = np.arange(3000) % 40  # 40 classes
    params = trees.PARAMS["boosting"](max_rounds=3, max_leaf_nodes=4, min_samples_leaf=5)
    model = trees.fit("boosting", params, x, y, x[:500], y[:500], 40, 1)
    assert model.walk is not None, model.walk_problem
    plain = trees.Boosting(model.arrays, 40, 4, compiled=False)
    plain.fitted_with = model.fitted_with
    assert np.array_equal(model.predict_proba(x[:200]), plain.predict_proba(x[:200]))


def test_walk_layout_keeps_feature_indices_past_255():
    """A file may hold feature numbers in any integer type: the walk's layout must not
    wrap them (a wrapped index would read another feature and answer wrongly)."""
    from stages import tree_walk

    arrays = {"feature": np.array([300, -1, -1]), "left": np.array([1, 0, 0]),
              "right": np.array([2, 0, 0]), "threshold": np.zeros(3, np.float32),
              "missing_left": np.zeros(3, bool)}
    layout = tree_walk.node_layout(arrays, np.array([0, 3]))
    assert layout["feature"].tolist() == [300, 0, 0]
    assert layout["child"].tolist() == [1, 2, 1, 1, 2, 2]  # a leaf is its own child
    assert layout["depths"].tolist() == [1]


def _kernel(model) -> str:
    model.predict_proba(np.zeros((1, model.n_features), np.float32))
    return model._cache["kernel"][0].__name__


def test_boosting_takes_the_bit_masks_up_to_64_leaves_and_the_walk_above(data):
    """Trees of at most 64 leaves go through the bit-mask kernel, larger ones through the
    level walk; both give the numpy walk's bits, NaN or not."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, len(FEATURES))).astype("float32")
    y = rng.integers(0, 3, size=3000)  # noise: trees grow as far as they may
    x[::3, 5] = np.nan
    for leaves, kernel in ((64, "boosting_bit_sums"), (65, "boosting_sums")):
        params = trees.PARAMS["boosting"](max_leaf_nodes=leaves, min_samples_leaf=2,
                                          max_rounds=2)
        model = trees.fit("boosting", params, x, y, x[:300], y[:300], 3, n_jobs=1)
        n_leaves = np.add.reduceat(model.is_leaf, model.bounds[:-1].astype(np.int64))
        assert n_leaves.max() == leaves  # the data let a tree grow that far
        assert model.walk is not None and _kernel(model) == kernel
        if kernel == "boosting_bit_sums":  # splits in the low half, the high one and both
            halves = model._cache["kernel"][1][trees.BIT_KEYS.index("halves")]
            assert set(halves.tolist()) == {1, 2, 3}
        plain = trees.Boosting(model.arrays, model.n_classes, model.n_features, compiled=False)
        np.testing.assert_array_equal(model.predict_proba(x), plain.predict_proba(x))
        np.testing.assert_array_equal(model.predict_proba(x[1::3]), plain.predict_proba(x[1::3]))


def _tree_arrays(left, right, feature):
    """One tree in the file layout from absolute child numbers (-1 at a leaf)."""
    left, right = np.array(left), np.array(right)
    nodes = np.arange(len(left))
    return {"feature": np.array(feature), "left": np.where(left < 0, 0, left - nodes),
            "right": np.where(right < 0, 0, right - nodes),
            "threshold": np.zeros(len(left), np.float32), "missing_left": np.zeros(len(left), bool)}


def test_bit_layout_numbers_leaves_left_to_right_and_masks_left_subtrees():
    from stages import tree_walk

    #        0
    #      /   \
    #     1     2
    #    / \   / \
    #   3   4 5   6      leaves 3, 4, 5, 6 and ... 6 splits again:
    #            / \
    #           7   8
    arrays = _tree_arrays(left=[1, 3, 5, -1, -1, -1, 7, -1, -1],
                          right=[2, 4, 6, -1, -1, -1, 8, -1, -1],
                          feature=[0, 1, 2, -1, -1, -1, 3, -1, -1])
    bounds = np.array([0, 9])
    bits = tree_walk.bit_layout(arrays, tree_walk.node_layout(arrays, bounds), bounds)
    assert bits["leaf_node"].tolist() == [3, 4, 5, 7, 8]
    assert bits["split_start"].tolist() == [0, 4] and bits["leaf_start"].tolist() == [0, 5]
    cleared = [int(~m & np.uint64(0xFF)) for m in bits["mask"]]  # the left subtree's leaves
    assert cleared == [0b00011, 0b00001, 0b00100, 0b01000]  # splits 0, 1, 2, 6
    assert bits["feature"].tolist() == [0, 1, 2, 3]


def test_split_halves_cuts_each_mask_where_its_left_subtree_is():
    """The kernel's 64 leaf bits are two 32-bit words: a split clears bits in the word(s)
    that hold its left subtree's leaves, and touches no other."""
    from stages import tree_walk

    full = (1 << 64) - 1
    left_leaves = [0b11, 1 << 40, ((1 << 8) - 1) << 28]  # leaves 0-1, leaf 40, leaves 28-35
    halves = tree_walk.split_halves(np.array([full ^ bits for bits in left_leaves], np.uint64))
    assert halves["halves"].tolist() == [1, 2, 3]
    assert [hex(v) for v in halves["mask_low"]] == ["0xfffffffc", "0xffffffff", "0xfffffff"]
    assert [hex(v) for v in halves["mask_high"]] == ["0xffffffff", "0xfffffeff", "0xfffffff0"]


def _chain(n_splits):
    """A tree whose every split has a leaf on the left and the next split on the right."""
    n_nodes = 2 * n_splits + 1
    left = [k + 1 if k % 2 == 0 and k < n_nodes - 1 else -1 for k in range(n_nodes)]
    right = [k + 2 if k % 2 == 0 and k < n_nodes - 1 else -1 for k in range(n_nodes)]
    return _tree_arrays(left, right, [0 if side >= 0 else -1 for side in left])


def test_bit_layout_refuses_shared_children_and_wide_trees():
    """A node with two parents (a file may say so; every walk still ends) or a tree of more
    than 64 leaves: no bit layout, so the level walk answers."""
    from stages import tree_walk

    def layout(arrays):
        bounds = np.array([0, len(arrays["feature"])])
        return tree_walk.bit_layout(arrays, tree_walk.node_layout(arrays, bounds), bounds)

    assert layout(_tree_arrays(left=[1, 3, -1, -1, -1], right=[2, 4, -1, -1, -1],
                               feature=[0, 1, -1, -1, -1])) is not None
    # node 2 under both 0 and 1
    assert layout(_tree_arrays(left=[1, 2, -1, -1], right=[2, 3, -1, -1],
                               feature=[0, 1, -1, -1])) is None
    bits = layout(_chain(63))  # 64 leaves
    assert bits is not None and bits["leaf_start"].tolist() == [0, 64]
    assert int(bits["mask"][-1]) == (1 << 64) - 1 - (1 << 62)  # the last split's left leaf
    assert layout(_chain(64)) is None  # 65 leaves
