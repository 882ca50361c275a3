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


def _fit_temperature_in_one_pass(proba, y):
    """fit_temperature as it was written first: every row at once, one temperature after
    another (the reference the faster version must match bit for bit)."""
    best, best_error = 1.0, cal.expected_calibration_error(proba, y)
    log_proba, ruled_out = np.log(np.maximum(proba, cal.TINY)), proba <= 0
    for temperature in cal.TEMPERATURES:
        tempered = (proba if temperature == 1.0
                    else cal._tempered(log_proba, ruled_out, float(temperature)))
        error = cal.expected_calibration_error(tempered, y)
        if error < best_error - 1e-9:
            best, best_error = float(temperature), error
    return best


@pytest.mark.parametrize("threads", ["1", "2", "3"])
def test_temperature_in_parts_and_threads_is_the_one_pass_answer(threads, monkeypatch):
    monkeypatch.setenv("SPOTIFY_GENRE_THREADS", threads)
    monkeypatch.setattr(cal, "TEMPERING_ROWS", 7)  # many parts, the last one short
    proba, y = _overconfident(rows=1000, classes=12, seed=4)
    proba[::5, 3] = 0.0  # ruled-out classes
    proba /= proba.sum(axis=1, keepdims=True)
    for temperature in cal.TEMPERATURES[::24]:
        if temperature == 1.0:
            continue  # fit_temperature scores the probabilities themselves there
        expected = cal.expected_calibration_error(cal.apply_temperature(proba, temperature), y)
        got = cal._tempered_error(np.log(np.maximum(proba, cal.TINY)), proba <= 0, y,
                                  float(temperature))
        assert got == expected  # the same bits, not merely close
    assert cal.fit_temperature(proba, y) == _fit_temperature_in_one_pass(proba, y)
    flat = np.full((50, 12), 1 / 12)  # no temperature changes anything: 1.0
    assert cal.fit_temperature(flat, y[:50]) == _fit_temperature_in_one_pass(flat, y[:50]) == 1.0
