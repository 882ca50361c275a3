"""Stage blend: the weighted mean of the families' probabilities, fitted on validation.

Reads the families named by param ``blend.members`` (models/<family>.keras or .npz) and
the validation split, nothing else: the test split stays for evaluate. Finds the
non-negative weights, summing to 1, whose weighted mean of the members' probabilities has
the smallest validation log loss once tempered (softmax(log mean / T), with T fitted
together with the weights: the blend is published tempered; against weights fitted to the
untempered mean, 2-fold cross-fitted on validation: accuracy +0.19 point [-0.01, +0.38],
log loss 2.3032 against 2.3059); a member below ``blend.min_weight`` is left out and the
rest refitted (a member that hardly moves the answer would still cost its whole
prediction time). The mean then gets the temperature of stages.calibration, fitted on the
same split, like every family. Writes models/blend.zip (the kept members' own files, their
weights, the temperature, the class and feature lists: stages.model_files.save_blend)
and reports/blend.json (weights, temperature, validation accuracy and log loss of each
member and of the blend).
"""

from __future__ import annotations

import argparse

import numpy as np

from stages.calibration import TEMPERATURES, TINY, apply_temperature, fit_temperature, log_loss
from stages.common import (
    CLASSES_JSON,
    FEATURES,
    REPORTS_DIR,
    UserError,
    cli,
    label_indices,
    read_classes,
    read_labeled,
    validation_proba,
    write_json,
    write_val_proba,
)
from stages.params import BLEND, load_final_fit, load_section

NEGLIGIBLE = 1e-6  # a fitted weight below this is the optimiser's rounding of 0


def true_class_probabilities(probas: list[np.ndarray], y: np.ndarray) -> np.ndarray:
    """(rows, members): each member's probability of each row's true class. The log loss
    of any weighted mean depends on nothing else, so the fit works on this alone."""
    rows = np.arange(len(y))
    return np.stack([np.asarray(p, dtype=np.float64)[rows, y] for p in probas], axis=1)


def blend_log_loss(weights: np.ndarray, picked: np.ndarray) -> float:
    return float(-np.log(np.maximum(picked @ weights, 1e-12)).mean())


def fit_weights(picked: np.ndarray) -> np.ndarray:
    """The non-negative weights summing to 1 with the smallest log loss of ``picked @ w``.

    The loss is convex in w, so the optimiser's minimum over the simplex is the minimum."""
    from scipy.optimize import minimize  # noqa: PLC0415

    n_members = picked.shape[1]
    if n_members == 1:
        return np.ones(1)

    def gradient(weights, picked):
        return -(picked / np.maximum(picked @ weights, 1e-12)[:, None]).mean(axis=0)

    start = np.full(n_members, 1.0 / n_members)
    result = minimize(blend_log_loss, start, args=(picked,), jac=gradient, method="SLSQP",
                      bounds=[(0.0, 1.0)] * n_members,
                      constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0,
                                    "jac": lambda w: np.ones_like(w)}],
                      options={"ftol": 1e-10, "maxiter": 500})
    weights = np.clip(result.x, 0.0, None)
    if not np.isfinite(weights).all() or weights.sum() <= 0:
        return start
    weights = weights / weights.sum()
    # the optimiser may stop short of the minimum: never worse than the plain mean
    return weights if blend_log_loss(weights, picked) <= blend_log_loss(start, picked) else start


TEMPERATURE_RANGE = (float(TEMPERATURES[0]), float(TEMPERATURES[-1]))  # calibration's


def tempered_log_loss(weights: np.ndarray, temperature: float, stacked: np.ndarray,
                      y: np.ndarray, gradient: bool = False):
    """Log loss of softmax(log(sum_i w_i p_i) / T), the blend's probabilities once tempered
    (``stacked``: members x rows x classes); with ``gradient``, also its gradient in
    (w_1 .. w_m, log T)."""
    mixed = np.maximum(np.tensordot(weights, stacked, axes=1), TINY)
    log_mixed = np.log(mixed)
    if not gradient:
        return _tempered_loss(log_mixed, temperature, y)[0]
    loss, logits, norm = _tempered_loss(log_mixed, temperature, y)
    rows = np.arange(len(y))
    residual = np.exp(logits - norm[:, None])  # softmax, minus the true class's one-hot
    residual[rows, y] -= 1.0
    residual /= len(y)
    by_weight = np.einsum("rc,mrc->m", residual / (mixed * temperature), stacked)
    by_log_temperature = -float((residual * logits).sum())
    return loss, np.append(by_weight, by_log_temperature)


def _tempered_loss(log_mixed: np.ndarray, temperature: float, y: np.ndarray):
    """(loss, logits, their log-sum-exp per row) of softmax(log_mixed / T) against y."""
    logits = log_mixed / temperature
    top = logits.max(axis=1)
    # log-sum-exp in plain numpy: scipy's generic one took half the stage's time
    norm = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
    return float((norm - logits[np.arange(len(y)), y]).mean()), logits, norm


def fit_tempered_weights(stacked: np.ndarray, y: np.ndarray, start: np.ndarray) -> np.ndarray:
    """The simplex weights that, with the best temperature, give the smallest tempered log
    loss (weights and temperature fitted together), from ``start``. The blend is published
    tempered, so its weights are chosen for the tempered probabilities; never worse there
    than ``start`` with its own best temperature."""
    from scipy.optimize import minimize, minimize_scalar  # noqa: PLC0415

    n_members = len(stacked)
    if n_members == 1:
        return np.ones(1)
    low, high = np.log(TEMPERATURE_RANGE)

    def loss(params):
        return tempered_log_loss(params[:-1], float(np.exp(params[-1])), stacked, y, True)

    def best_temperature_loss(weights):
        # convex in 1/T (a log-sum-exp of terms linear in it): the bounded search is global
        log_mixed = np.log(np.maximum(np.tensordot(weights, stacked, axes=1), TINY))
        found = minimize_scalar(lambda inverse: _tempered_loss(log_mixed, 1.0 / inverse, y)[0],
                                bounds=(1.0 / TEMPERATURE_RANGE[1], 1.0 / TEMPERATURE_RANGE[0]),
                                method="bounded", options={"xatol": 1e-6})
        return float(found.fun)

    result = minimize(loss, np.append(start, 0.0), jac=True, method="SLSQP",
                      bounds=[(0.0, 1.0)] * n_members + [(low, high)],
                      constraints=[{"type": "eq", "fun": lambda p: p[:-1].sum() - 1.0,
                                    "jac": lambda p: np.append(np.ones(n_members), 0.0)}],
                      options={"ftol": 1e-10, "maxiter": 500})
    weights = np.clip(result.x[:-1], 0.0, None)
    if not np.isfinite(weights).all() or weights.sum() <= 0:
        return start
    weights = weights / weights.sum()
    return weights if best_temperature_loss(weights) <= best_temperature_loss(start) else start


def choose_weights(picked: np.ndarray, min_weight: float, stacked: np.ndarray | None = None,
                   y: np.ndarray | None = None) -> np.ndarray:
    """fit_weights (then, given the members' probabilities ``stacked`` and the labels,
    fit_tempered_weights from there), then leave out every member below ``min_weight`` and
    refit the rest, until every kept member weighs at least that; left-out members weigh
    exactly 0."""
    threshold = max(min_weight, NEGLIGIBLE)
    kept = np.arange(picked.shape[1])
    while True:
        weights = fit_weights(picked[:, kept])
        if stacked is not None:
            weights = fit_tempered_weights(stacked[kept], y, weights)
        small = weights < threshold
        if not small.any():
            break
        if small.all():  # every member small (min_weight above 1/members): keep the largest
            kept = kept[[int(np.argmax(weights))]]
            weights = np.ones(1)
            break
        kept = kept[~small]
    full = np.zeros(picked.shape[1])
    full[kept] = weights
    return full


def scores(proba: np.ndarray, y: np.ndarray) -> dict:
    return {"accuracy": round(float((np.asarray(proba).argmax(axis=1) == y).mean()), 5),
            "log_loss": round(log_loss(proba, y), 5)}


def fit_blend(probas: dict[str, np.ndarray], y: np.ndarray, min_weight: float) -> dict:
    """Weights (by member name), temperature and validation scores of each member and the blend."""
    names = list(probas)
    stacked = np.stack([np.asarray(probas[n], dtype=np.float64) for n in names])
    weights = choose_weights(true_class_probabilities(list(stacked), y), min_weight, stacked, y)
    fitted = {"weights": {n: float(w) for n, w in zip(names, weights)}, "temperature": 1.0}
    fitted["temperature"] = fit_temperature(blended_proba(probas, fitted), y)
    validation = {name: scores(probas[name], y) for name in names}
    validation[BLEND] = scores(blended_proba(probas, fitted), y)
    return {**fitted, "val_rows": int(len(y)), "validation": validation}


def load_members(names: list[str], classes: list[str]) -> dict:
    """{family: (features, file)}, read without loading the models (no TensorFlow); a
    missing file or one of another class list is one clear error."""
    from stages.model_files import family_file, read_classes_and_features  # noqa: PLC0415

    members = {}
    for name in names:
        path = family_file(name)
        member_classes, features = read_classes_and_features(path)
        if member_classes != classes:
            raise UserError(f"{path}: trained on another class list than {CLASSES_JSON} "
                            f"({len(member_classes)} classes, now {len(classes)}): "
                            "retrain it (dvc repro)")
        members[name] = (features, path)
    return members


def predicted(path, features: list[str], frame) -> np.ndarray:
    """A saved model's probabilities for ``frame``, loading it (and TensorFlow) only now."""
    from stages.model_files import load_model, predict_proba  # noqa: PLC0415
    from stages.tf_setup import quiet_tensorflow  # noqa: PLC0415

    quiet_tensorflow()
    return predict_proba(load_model(path)[0], frame[features].to_numpy("float32"))


def blend(params, classes: list[str], val, final_fit: str = "train"
          ) -> tuple[dict, list, list[str], np.ndarray]:
    """(report, [(name, file, weight)] of the kept members, the blend's feature list, its
    calibrated validation probabilities)."""
    from stages.model_files import MISSING_MEMBER, read_member  # noqa: PLC0415

    members = load_members(list(params.members), classes)
    y = label_indices(val, classes)
    # the members' fits on train alone (with final_fit = train+val the files have seen val);
    # their train stages wrote them, so the models are loaded only for a file fitted elsewhere
    probas = {name: validation_proba(
                  name, len(val), len(classes), final_fit,
                  lambda path=path, features=features: predicted(path, features, val))
              for name, (features, path) in members.items()}
    report = {"members_considered": list(params.members), "min_weight": params.min_weight,
              **fit_blend(probas, y, params.min_weight)}
    fallback = next((name for name, (_, path) in members.items()
                     if read_member(path, MISSING_MEMBER) is not None), None)
    report["fallback"] = fallback  # answers rows with a missing feature on its own
    kept = [(name, members[name][1], weight) for name, weight in report["weights"].items()
            if weight > 0 or name == fallback]
    used = {f for name, _, _ in kept for f in members[name][0]}
    return report, kept, [f for f in FEATURES if f in used], blended_proba(probas, report)


def blended_proba(probas: dict[str, np.ndarray], report: dict) -> np.ndarray:
    """The calibrated weighted mean that fit_blend scored."""
    mean = sum(weight * np.asarray(probas[name], dtype=np.float64)
               for name, weight in report["weights"].items() if weight > 0)
    return apply_temperature(mean / mean.sum(axis=1, keepdims=True), report["temperature"])


def member_ranges(paths: list, features: list[str]) -> dict[str, list[float]]:
    """Each feature's training range over the members' own (the same training rows, so
    the same ranges, for members of one run)."""
    from stages.model_files import read_ranges  # noqa: PLC0415

    ranges: dict[str, list[float]] = {}
    for path in paths:
        for feature, (low, high) in (read_ranges(path) or {}).items():
            old = ranges.get(feature, [low, high])
            ranges[feature] = [min(old[0], low), max(old[1], high)]
    return {f: ranges[f] for f in features if f in ranges}


@cli
def main(argv: list[str] | None = None) -> None:
    from stages.model_files import (  # noqa: PLC0415
        MISSING_MEMBER,
        RANGES_MEMBER,
        family_file,
        read_member,
        save_blend,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    params = load_section(BLEND)
    final_fit = load_final_fit()
    classes = read_classes()
    report, kept, features, val_proba = blend(params, classes, read_labeled("val"), final_fit)
    report["features"] = features
    extra = {RANGES_MEMBER: member_ranges([path for _, path, _ in kept], features)}
    if report["fallback"]:  # the blend takes missing features as its fallback member does
        extra[MISSING_MEMBER] = read_member(family_file(report["fallback"]), MISSING_MEMBER)
    save_blend(family_file(BLEND), kept, classes, features, report["temperature"], extra,
               report["fallback"])
    write_json(REPORTS_DIR / "blend.json", report)
    write_val_proba(BLEND, val_proba)
    weights = ", ".join(f"{name} {weight:.3f}" for name, _, weight in kept)
    val = report["validation"][BLEND]
    print(f"blend: {weights}; temperature {report['temperature']}; val accuracy "
          f"{val['accuracy']:.4f}, log loss {val['log_loss']:.4f}")


if __name__ == "__main__":
    main()
