"""Builders build, fit a step, and survive a save/load round trip with their class and
feature lists; they work on any feature subset."""

import json
import zipfile

import numpy as np
import pytest

from stages.common import AUDIO_FEATURES, FEATURES, UserError, label_indices
from stages.params import validate
from stages.tf_setup import quiet_tensorflow
from tests.conftest import make_tracks

quiet_tensorflow()

from stages import model_files, models, train  # noqa: E402
import keras  # noqa: E402

CLASSES = ["acoustic", "blues", "chill", "dance"]


@pytest.fixture(scope="module")
def frames():
    from stages.split import clean

    frame, _ = clean(make_tracks(rows_per_genre=30))
    frame["label"] = frame["track_genre"]
    return frame.iloc[::2].reset_index(drop=True), frame.iloc[1::2].reset_index(drop=True)


VARIANTS = {
    "softmax-study": ("softmax", {"inputs": "standardized"}),
    "softmax-engineered": ("softmax", {"inputs": "engineered"}),
    "mlp-study": ("mlp", {"inputs": "standardized", "hidden": [100, 150, 150, 150],
                          "dropout": 0.2, "dropout_at": "first", "batch_norm": False}),
    "mlp-default": ("mlp", {}),
    "mlp-embedded": ("mlp", {"embedding_dim": 4, "hidden": [16]}),
    "mlp-periodic": ("mlp", {"embedding_dim": 4, "numeric_embedding": "periodic",
                             "embedding_frequencies": 3, "frequency_scale": 0.5, "hidden": [16]}),
    "mlp-ensemble-mini": ("mlp", {"ensemble_size": 3, "hidden": [16, 8]}),
    "mlp-ensemble-batch": ("mlp", {"ensemble_size": 3, "ensemble_style": "batch",
                                   "hidden": [16, 8], "batch_norm": False}),
    "mlp-ensemble-packed": ("mlp", {"ensemble_size": 3, "ensemble_style": "packed",
                                    "hidden": [16, 8]}),
    "mlp-label-smoothing": ("mlp", {"label_smoothing": 0.1, "hidden": [16]}),
    "mlp-everything": ("mlp", {"ensemble_size": 2, "label_smoothing": 0.1, "embedding_dim": 4,
                               "numeric_embedding": "periodic", "hidden": [16]}),
    "softmax-label-smoothing": ("softmax", {"label_smoothing": 0.2}),
    "lstm-dense_lstm-study": ("lstm", {"variant": "dense_lstm", "inputs": "standardized",
                                       "step_units": 250, "lstm_units": [80]}),
    "lstm-stacked-study": ("lstm", {"variant": "stacked", "inputs": "standardized",
                                    "lstm_units": [80, 150]}),
    "lstm-token": ("lstm", {"variant": "token", "step_units": 8, "lstm_units": [8]}),
    "lstm-periodic": ("lstm", {"variant": "token", "numeric_embedding": "periodic",
                               "embedding_frequencies": 3, "step_units": 8, "lstm_units": [8]}),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_builder_fits_and_round_trips(name, frames, tmp_path):
    import keras

    family, changes = VARIANTS[name]
    params = validate(family, {"epochs": 1, "batch_size": 32, **changes})
    train_frame, val_frame = frames
    model, history, summary = train.train(family, params, train_frame, val_frame, CLASSES)
    assert summary["epochs_run"] == 1 and np.isfinite(history["loss"][0])
    assert model.input_shape == (None, len(FEATURES))
    raw = val_frame[FEATURES].to_numpy("float32")
    before = model.predict(raw, verbose=0)
    path = tmp_path / f"{family}.keras"
    model_files.save_model(model, path, CLASSES, FEATURES)
    plain = keras.models.load_model(path)  # nothing but Keras needed
    loaded, classes, features = model_files.load_model(path)
    assert classes == CLASSES and features == FEATURES
    np.testing.assert_array_equal(plain.predict(raw, verbose=0), before)
    np.testing.assert_array_equal(loaded.predict(raw, verbose=0), before)
    assert before.shape == (len(raw), len(CLASSES))
    np.testing.assert_allclose(before.sum(axis=1), 1, rtol=1e-5)


def test_ensemble_fits_members_and_answers_with_their_mean(frames):
    params = validate("mlp", {"ensemble_size": 3, "hidden": [8], "epochs": 1})
    train_x = frames[0][FEATURES].to_numpy("float32")
    model = models.build("mlp", train_x, 4, params)
    fitted = models.training_model(model)
    assert fitted is not model and fitted.output_shape == (None, 3, 4)
    assert models.training_model(models.build("mlp", train_x, 4, validate("mlp", {}))).output_shape \
        == (None, 4)
    members = fitted.predict(train_x[:5], verbose=0)
    np.testing.assert_allclose(model.predict(train_x[:5], verbose=0), members.mean(axis=1),
                               rtol=1e-5, atol=1e-7)
    assert not np.allclose(members[:, 0], members[:, 1])  # the adapters' random signs differ
    y = np.array([0, 3])
    assert models.targets(y, 4, params, fitted).tolist() == [[0, 0, 0], [3, 3, 3]]
    smooth = models.targets(y, 4, params.model_copy(update={"label_smoothing": 0.1}), fitted)
    assert smooth.shape == (2, 3, 4) and smooth[1, 2].tolist() == [0, 0, 0, 1]


def test_study_lstm_shapes(frames):
    params = validate("lstm", {"variant": "stacked", "inputs": "standardized",
                               "lstm_units": [80, 150]})
    model = models.build("lstm", frames[0][FEATURES].to_numpy("float32"), 4, params)
    lstm_layers = [layer for layer in model.layers if layer.__class__.__name__ == "LSTM"]
    assert [layer.units for layer in lstm_layers] == [80, 150]


def test_engineered_inputs_one_hot_key_and_log_skewed(frames):
    import keras

    params = validate("softmax", {"inputs": "engineered"})
    train_x = frames[0][FEATURES].to_numpy("float32")
    model = models.build("softmax", train_x, 4, params)
    block = keras.Model(model.input, model.get_layer("engineered").output)
    out = block.predict(train_x[:5], verbose=0)
    assert out.shape == (5, len(FEATURES) + 12 + 6)
    key = train_x[:5, FEATURES.index("key")].astype(int)
    np.testing.assert_array_equal(out[:, len(FEATURES):len(FEATURES) + 12].argmax(axis=1), key)


def test_non_finite_training_features_are_a_clear_error():
    from stages.common import UserError

    bad = np.zeros((4, len(FEATURES)), dtype="float32")
    bad[0, 0] = np.nan
    with pytest.raises(UserError, match="NaN/inf"):
        models.build("mlp", bad, 3, validate("mlp", {}))


def test_labels_outside_the_class_list_are_a_clear_error(frames):
    from stages.common import UserError

    with pytest.raises(UserError, match="labels not in the model.s class list: dance"):
        train.features_and_labels(frames[0], CLASSES[:3])


# --- feature subsets (param `features`) -------------------------------------------


@pytest.mark.parametrize("name", ["softmax-engineered", "mlp-embedded", "lstm-token",
                                  "lstm-periodic", "lstm-stacked-study", "lstm-dense_lstm-study"])
def test_builders_take_the_audio_features(name, frames):
    family, changes = VARIANTS[name]
    params = validate(family, {"epochs": 1, "batch_size": 32, **changes})
    train_x = frames[0][AUDIO_FEATURES].to_numpy("float32")
    model = models.build(family, train_x, 4, params, AUDIO_FEATURES)
    assert model.input_shape == (None, 13)
    assert model.predict(train_x[:3], verbose=0).shape == (3, 4)
    if family == "lstm":  # one step per feature
        assert model.get_layer("lstm_0").input.shape[1] == 13
    if "feature_tokens" in [layer.name for layer in model.layers]:
        assert model.get_layer("feature_tokens").output.shape[1] == 13


def test_periodic_lstm_steps_are_each_features_own_plr_embedding(frames):
    train_x = frames[0][FEATURES].to_numpy("float32")
    built = {}
    for name in ("lstm-token", "lstm-periodic"):
        family, changes = VARIANTS[name]
        built[name] = models.build(family, train_x, 4, validate(family, changes))
    periodic = built["lstm-periodic"]
    frequencies = periodic.get_layer("feature_tokens_frequencies")
    assert frequencies.kernel.shape == (len(FEATURES), 3)  # 3 learned frequencies per feature
    tokens = periodic.get_layer("feature_tokens")
    assert tokens.input.shape[1:] == (len(FEATURES), 6)  # their sin and cos
    assert tokens.output.shape[1:] == (len(FEATURES), 8) == periodic.get_layer("lstm_0").input.shape[1:]
    names = [layer.name for layer in built["lstm-token"].layers]
    assert "feature_tokens" in names and "feature_tokens_frequencies" not in names


def test_engineered_inputs_look_features_up_by_name(frames):
    import keras

    params = validate("softmax", {"inputs": "engineered"})
    train_x = frames[0][AUDIO_FEATURES].to_numpy("float32")
    model = models.build("softmax", train_x, 4, params, AUDIO_FEATURES)
    out = keras.Model(model.input, model.get_layer("engineered").output).predict(
        train_x[:5], verbose=0)
    assert out.shape == (5, 13 + 12 + 6)
    key = train_x[:5, AUDIO_FEATURES.index("key")].astype(int)
    np.testing.assert_array_equal(out[:, 13:13 + 12].argmax(axis=1), key)
    # the log goes to the long-tailed features wherever they sit in the list
    norm = model.get_layer("standardize")
    i = AUDIO_FEATURES.index("duration_ms")
    expected = np.log(np.maximum(train_x[:, i], 0) + 1.0).mean()
    assert float(np.asarray(norm.mean).ravel()[i]) == pytest.approx(expected, rel=1e-4)


def test_a_subset_without_categorical_features_builds(frames):
    subset = ["energy", "liveness", "tempo"]
    train_x = frames[0][subset].to_numpy("float32")
    for family, changes in (("mlp", {"embedding_dim": 2, "hidden": [4]}), ("softmax", {})):
        model = models.build(family, train_x, 4, validate(family, changes), subset)
        assert model.input_shape == (None, 3)
        assert np.isfinite(model.predict(train_x[:2], verbose=0)).all()


def test_builder_refuses_features_that_do_not_match_train_x(frames):
    with pytest.raises(ValueError, match="expected"):
        models.build("mlp", frames[0][FEATURES].to_numpy("float32"), 4, validate("mlp", {}),
                     AUDIO_FEATURES)


@pytest.fixture(scope="module")
def audio_model_file(frames, tmp_path_factory):
    params = validate("mlp", {"epochs": 1, "batch_size": 32, "hidden": [8]})
    model, _, summary = train.train("mlp", params, *frames, CLASSES, features=AUDIO_FEATURES)
    assert summary["features"] == AUDIO_FEATURES
    path = tmp_path_factory.mktemp("audio") / "mlp.keras"
    model_files.save_model(model, path, CLASSES, AUDIO_FEATURES)
    return path


def _rewrite_zip(source, dest, drop=(), add=None):
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(dest, "w") as new:
        for item in old.infolist():
            if item.filename not in drop:
                new.writestr(item, old.read(item.filename))
        for name, data in (add or {}).items():
            new.writestr(name, data)
    return dest


def test_saved_feature_list_round_trips(audio_model_file, frames):
    model, classes, features = model_files.load_model(audio_model_file)
    assert features == AUDIO_FEATURES and classes == CLASSES
    assert model.input_shape == (None, 13)
    assert model_files.read_features(audio_model_file) == AUDIO_FEATURES
    with zipfile.ZipFile(audio_model_file) as archive:
        assert json.loads(archive.read("features.json")) == AUDIO_FEATURES
    proba = model_files.predict_proba(model, frames[1][features].to_numpy("float32"))
    assert proba.shape == (len(frames[1]), 4)


def test_a_model_file_without_a_feature_list_takes_all_15(frames, tmp_path):
    params = validate("softmax", {"epochs": 1, "batch_size": 32})
    model, _, _ = train.train("softmax", params, *frames, CLASSES)
    new_style = tmp_path / "new.keras"
    model_files.save_model(model, new_style, CLASSES, FEATURES)
    old_style = _rewrite_zip(new_style, tmp_path / "old.keras", drop={"features.json"})
    with zipfile.ZipFile(old_style) as archive:
        assert "features.json" not in archive.namelist()
    _, classes, features = model_files.load_model(old_style)
    assert features == FEATURES and classes == CLASSES
    assert model_files.read_features(old_style) == FEATURES


def test_a_feature_list_that_does_not_fit_the_model_is_refused(audio_model_file, tmp_path):
    wrong = _rewrite_zip(audio_model_file, tmp_path / "wrong.keras", drop={"features.json"})
    with pytest.raises(UserError, match="not a model saved by this project.*takes 13 values"):
        model_files.load_model(wrong)  # no list means 15, the model takes 13
    junk = _rewrite_zip(audio_model_file, tmp_path / "junk.keras", drop={"features.json"},
                        add={"features.json": json.dumps(["energy", "loudness", "colour"])})
    with pytest.raises(UserError, match="not a list of feature names"):
        model_files.read_features(junk)


def test_predict_proba_uses_an_objects_own_predict_proba():
    class Forest:  # what a tree-model family's loaded model looks like
        def predict_proba(self, x):
            return np.full((len(x), 3), 1 / 3)

        def __call__(self, *args, **kwargs):
            raise AssertionError("called like a Keras model")

    proba = model_files.predict_proba(Forest(), np.zeros((5, 13), dtype="float32"))
    assert proba.shape == (5, 3)


def test_an_ensemble_stops_on_its_mean_not_its_members(frames):
    params = validate("mlp", {"ensemble_size": 3, "hidden": [8], "epochs": 3, "batch_size": 32})
    model, history, summary = train.train("mlp", params, *frames, CLASSES)
    # the served model's own validation scores, once per epoch (one pass: not the members')
    assert len(history["val_loss"]) == len(history["val_accuracy"]) == 3
    assert not [key for key in history if key.startswith("val_mean")]
    assert summary["best_epoch"] == int(np.argmin(history["val_loss"])) + 1
    val_x = frames[1][FEATURES].to_numpy("float32")
    y = label_indices(frames[1], CLASSES)
    proba = model.predict(val_x, verbose=0)
    best = summary["best_epoch"] - 1  # restored weights: the best epoch's mean loss
    picked = np.clip(proba, 1e-7, 1.0)[np.arange(len(y)), y]
    assert -np.log(picked).mean() == pytest.approx(history["val_loss"][best], rel=1e-4)
    assert (proba.argmax(axis=1) == y).mean() == pytest.approx(history["val_accuracy"][best])
    top5 = keras.metrics.SparseTopKCategoricalAccuracy(k=5)
    top5.update_state(y, proba)
    assert float(top5.result()) == pytest.approx(history["val_top5"][best])
    single = train.train("mlp", params.model_copy(update={"ensemble_size": 1}), *frames, CLASSES)
    assert len(single[1]["val_loss"]) == 3 and "val_top5" in single[1]


def test_a_masked_mlp_answers_with_features_missing_and_round_trips(frames, tmp_path):
    train_frame, val_frame = frames
    params = validate("mlp", {"epochs": 2, "batch_size": 32, "hidden": [16], "embedding_dim": 4,
                              "numeric_embedding": "periodic", "ensemble_size": 2,
                              "feature_dropout": 0.2, "popularity_dropout": 0.5})
    model, _, summary = train.train("mlp", params, train_frame, val_frame, CLASSES)
    assert models.accepts_missing(model)
    x = val_frame[FEATURES].to_numpy("float32")[:20].copy()
    x[:, FEATURES.index("time_signature")] = np.nan
    x[:5, :8] = np.nan  # some rows with only 7 features
    proba = model_files.predict_proba(model, x)
    assert np.isfinite(proba).all() and np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    # a missing value is not a zero: hiding time_signature changes the answer of its rows
    full = model_files.predict_proba(model, val_frame[FEATURES].to_numpy("float32")[:20])
    assert not np.allclose(proba[5:], full[5:])
    path = tmp_path / "masked.keras"
    model_files.save_model(model, path, CLASSES, FEATURES)
    loaded, _, _ = model_files.load_model(path)
    assert models.accepts_missing(loaded)
    assert np.array_equal(model_files.predict_proba(loaded, x), proba)


def test_an_unmasked_mlp_does_not_claim_to_take_missing_features(frames):
    train_frame, _ = frames
    params = validate("mlp", {"hidden": [8]})
    model = models.build("mlp", train_frame[FEATURES].to_numpy("float32"), 4, params, FEATURES)
    assert not models.accepts_missing(model)


def test_hidden_features_follow_the_rates_and_the_seed():
    x = np.ones((20000, len(FEATURES)), dtype="float32")
    hidden = models.hidden_mask(x.shape, 0.1, FEATURES, np.random.default_rng(0), 0.5)
    api = [FEATURES.index("popularity"), FEATURES.index("explicit")]
    others = [i for i in range(len(FEATURES)) if i not in api]
    assert hidden[:, others].mean() == pytest.approx(0.1, abs=0.01)
    both = hidden[:, api].all(axis=1).mean()  # 0.5 together, plus 0.1 * 0.1 by chance
    assert both == pytest.approx(0.5 + 0.5 * 0.01, abs=0.015)
    again = models.hidden_mask(x.shape, 0.1, FEATURES, np.random.default_rng(0), 0.5)
    assert np.array_equal(hidden, again)
    rows, _ = train.masked_epoch(x, np.arange(len(x)), 0, 0.1, FEATURES, seed=0)
    assert np.isnan(rows).any() and not np.isnan(x).any()  # the input is left alone


def test_calibration_scales_probabilities_but_never_changes_the_answer(frames):
    train_frame, val_frame = frames
    params = validate("softmax", {"epochs": 3, "batch_size": 16, "learning_rate": 0.5})
    model, _, summary = train.train("softmax", params, train_frame, val_frame, CLASSES)
    assert summary["temperature"] > 0 and "val_ece" in summary
    x = val_frame[FEATURES].to_numpy("float32")
    y = label_indices(val_frame, CLASSES)
    calibrated, report, val_proba = train.calibrate(model, x, y)
    before = model_files.predict_proba(model, x)
    after = model_files.predict_proba(calibrated, x)
    assert np.array_equal(val_proba, after)  # what the stage writes to data/val_proba/
    assert np.array_equal(np.argmax(before, axis=1), np.argmax(after, axis=1))
    if report["temperature"] != 1.0:
        assert not np.allclose(before, after)


def test_masked_epochs_are_drawn_from_the_seed_and_streamed_in_order():
    x = np.arange(14 * len(FEATURES), dtype="float32").reshape(14, len(FEATURES))
    y = np.arange(14, dtype="int32")

    def draw(x, y, epoch, seed=5):
        return train.masked_epoch(x, y, epoch, 0.2, FEATURES, seed=seed, together_rate=0.5)

    epochs = [draw(x, y, e) for e in range(3)]
    again = draw(x, y, 1)
    assert np.array_equal(epochs[1][0], again[0], equal_nan=True)
    assert np.array_equal(epochs[1][1], again[1])
    assert not np.array_equal(epochs[1][1], draw(x, y, 1, seed=6)[1])
    for x_epoch, y_epoch in epochs:  # every row once per epoch, its features kept with its label
        assert sorted(y_epoch) == list(range(14))
        kept = ~np.isnan(x_epoch)
        assert np.array_equal(x_epoch[kept], x[y_epoch][kept])
    assert np.isnan(epochs[0][0]).any() and not np.array_equal(epochs[0][1], epochs[1][1])
    # batches of 4: each epoch's 14 rows end with a short batch; the next epoch follows,
    # the rows and hidden values exactly as masked_epoch gives them
    stream = train.epoch_dataset(x, y, 3, 4, lambda epoch: train.epoch_draw(
        14, len(FEATURES), epoch, 0.2, FEATURES, seed=5, together_rate=0.5))
    batches = [(a.numpy(), b.numpy()) for a, b in stream]
    assert [len(b) for _, b in batches] == [4, 4, 4, 2] * 3
    assert np.array_equal(np.concatenate([b for _, b in batches]),
                          np.concatenate([e[1] for e in epochs]))
    assert np.array_equal(np.concatenate([a for a, _ in batches]),
                          np.concatenate([e[0] for e in epochs]), equal_nan=True)


def test_keras_batches_without_autotuning_train_the_same_model(frames, monkeypatch):
    """train.shuffled() hands Keras its own shuffled batches with tf.data's autotuning
    off: the same model as Keras' fit on the plain arrays."""
    train_frame, val_frame = frames
    params = validate("softmax", {"epochs": 2, "batch_size": 16, "patience": 5})
    x, y = train.features_and_labels(train_frame, CLASSES, FEATURES)
    validation = train.features_and_labels(val_frame, CLASSES, FEATURES)
    assert train.shuffled(x, y, 16) is not None  # the pinned Keras has the adapter
    quiet, history = train.fit_network("softmax", params, x, y, CLASSES, FEATURES, 2, validation)
    monkeypatch.setattr(train, "shuffled", lambda *args: None)  # Keras' fit(x, y) itself
    plain, plain_history = train.fit_network("softmax", params, x, y, CLASSES, FEATURES, 2,
                                             validation)
    assert history == plain_history
    for a, b in zip(quiet.get_weights(), plain.get_weights()):
        assert np.array_equal(a, b)
