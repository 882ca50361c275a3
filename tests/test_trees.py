"""Tree families: fit, save/load round trip, determinism, and files that are not models."""

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from stages import trees
from stages.common import FEATURES, UserError
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


@pytest.fixture(scope="module", params=trees.TREE_FAMILIES)
def fitted(request, data):
    return request.param, fit(request.param, data)


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


def test_save_checks_names(fitted, data, tmp_path):
    family, model = fitted
    classes = data[-1]
    with pytest.raises(ValueError, match="class names"):
        trees.save(model, tmp_path / "m.npz", classes[:-1], FEATURES)
    with pytest.raises(ValueError, match="feature names"):
        trees.save(model, tmp_path / "m.npz", classes, FEATURES[:-1])
    assert not (tmp_path / "m.npz").exists()


def test_compiled_and_numpy_walks_agree(fitted, data, tmp_path):
    """scikit-learn's compiled tree walk (fast) and the numpy walk (fallback) give
    identical probabilities, NaN routing included."""
    family, model = fitted
    assert model.walk is not None  # the pinned scikit-learn has it
    path = tmp_path / "m.npz"
    trees.save(model, path, data[-1], FEATURES)
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in trees.NODE_KEYS + trees.LEAF_KEYS[family]}
    plain = trees.FAMILY_CLASSES[family](arrays, model.n_classes, model.n_features,
                                         compiled=False)
    x = data[2].copy()
    x[::4, 3] = np.nan
    np.testing.assert_array_equal(plain.predict_proba(x), model.predict_proba(x))


def test_wrong_input_width_is_refused(fitted, data):
    _, model = fitted
    with pytest.raises(ValueError, match=r"shape \(n, 15\)"):
        model.predict_proba(data[2][:, :14])


@pytest.mark.parametrize("family", trees.TREE_FAMILIES)
def test_same_seed_same_probabilities(family, data):
    x_val = data[2]
    first, second = fit(family, data), fit(family, data)
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
    model = fit("boosting", data, learning_rate=0.5, max_rounds=40, patience=3)
    reference = HistGradientBoostingClassifier(
        learning_rate=0.5, max_iter=40, max_leaf_nodes=7, min_samples_leaf=5,
        l2_regularization=5.0, early_stopping=True, n_iter_no_change=3, random_state=42)
    reference.fit(x_train, y_train, X_val=x_val, y_val=y_val)
    best = int(np.argmax(reference.validation_score_))
    assert 1 <= model.rounds == best < reference.n_iter_  # it did stop early and cut back
    x = x_val.copy()
    x[::3, 4] = np.nan
    expected = list(reference.staged_predict_proba(x))[best - 1]
    np.testing.assert_allclose(model.predict_proba(x), expected, rtol=1e-12, atol=1e-15)


def test_boosting_needs_every_class_in_training(data):
    x_train, y_train, x_val, y_val, classes = data
    keep = y_train != 2
    params = BoostingParams(**TINY["boosting"])
    with pytest.raises(UserError, match="all 6 classes"):
        trees.fit("boosting", params, x_train[keep], y_train[keep], x_val, y_val, len(classes))


def test_boosting_needs_the_validation_split(data):
    x_train, y_train, _, _, classes = data
    params = BoostingParams(**TINY["boosting"])
    with pytest.raises(ValueError, match="validation split"):
        trees.fit("boosting", params, x_train, y_train, None, None, len(classes))


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
