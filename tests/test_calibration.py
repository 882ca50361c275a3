"""Temperature scaling: fitted on the labels it is given, never changes a prediction."""

import numpy as np
import pytest

from stages import calibration as cal


def _overconfident(rows=4000, classes=5, seed=0):
    """Probabilities whose top-1 is right 50% of the time but claims ~95%."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, rows)
    guess = np.where(rng.random(rows) < 0.5, y, rng.integers(0, classes, rows))
    logits = rng.normal(0, 0.3, (rows, classes))
    logits[np.arange(rows), guess] += 5.0
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return proba, y


def test_temperature_fixes_an_overconfident_model_without_changing_its_ranking():
    proba, y = _overconfident()
    temperature = cal.fit_temperature(proba, y)
    assert temperature > 1.5  # softening
    calibrated = cal.apply_temperature(proba, temperature)
    assert cal.expected_calibration_error(proba, y) > 0.3
    assert cal.expected_calibration_error(calibrated, y) < 0.05
    assert np.allclose(calibrated.sum(axis=1), 1.0)
    assert (np.argsort(-calibrated, axis=1, kind="stable")
            == np.argsort(-proba, axis=1, kind="stable")).all()


def test_underconfident_model_is_sharpened_and_zeros_stay_zero():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 3000)
    proba = np.full((3000, 3), 0.3)
    proba[np.arange(3000), y] = 0.4  # always right, never sure
    proba[:, 2] = np.where(y == 2, proba[:, 2], 0.0)  # class 2 ruled out unless it is right
    proba /= proba.sum(axis=1, keepdims=True)
    temperature = cal.fit_temperature(proba, y)
    assert temperature < 0.5
    calibrated = cal.apply_temperature(proba, temperature)
    assert (calibrated[proba == 0] == 0).all()
    assert (calibrated.argmax(axis=1) == proba.argmax(axis=1)).all()


def test_a_calibrated_model_keeps_temperature_one():
    rng = np.random.default_rng(2)
    proba = rng.dirichlet(np.ones(4), 5000)
    y = np.array([rng.choice(4, p=p) for p in proba])  # labels drawn from the probabilities
    temperature = cal.fit_temperature(proba, y)
    assert temperature == pytest.approx(1.0, abs=0.1)
    assert cal.apply_temperature(proba, 1.0) is not None
    assert np.array_equal(cal.apply_temperature(proba, 1.0), proba)


def test_temperature_depends_only_on_the_labels_it_is_given():
    proba, y = _overconfident(seed=3)
    assert cal.fit_temperature(proba, y) == cal.fit_temperature(proba.copy(), y.copy())
    shuffled = y.copy()
    np.random.default_rng(0).shuffle(shuffled)
    assert cal.fit_temperature(proba, shuffled) != cal.fit_temperature(proba, y)
