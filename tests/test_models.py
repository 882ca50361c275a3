"""Builders build, fit a step, and survive a save/load round trip with their class list."""

import numpy as np
import pytest

from stages.common import FEATURES
from stages.params import validate
from stages.tf_setup import quiet_tensorflow
from tests.conftest import make_tracks

quiet_tensorflow()

from stages import model_files, models, train  # noqa: E402

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
    "lstm-dense_lstm-study": ("lstm", {"variant": "dense_lstm", "inputs": "standardized",
                                       "step_units": 250, "lstm_units": [80]}),
    "lstm-stacked-study": ("lstm", {"variant": "stacked", "inputs": "standardized",
                                    "lstm_units": [80, 150]}),
    "lstm-token": ("lstm", {"variant": "token", "step_units": 8, "lstm_units": [8]}),
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
    model_files.save_model(model, path, CLASSES)
    plain = keras.models.load_model(path)  # nothing but Keras needed
    loaded, classes = model_files.load_model(path)
    assert classes == CLASSES
    np.testing.assert_array_equal(plain.predict(raw, verbose=0), before)
    np.testing.assert_array_equal(loaded.predict(raw, verbose=0), before)
    assert before.shape == (len(raw), len(CLASSES))
    np.testing.assert_allclose(before.sum(axis=1), 1, rtol=1e-5)


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
