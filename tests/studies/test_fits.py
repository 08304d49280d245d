"""Fits: coverage of the bootstrap interval, hand examples, and errors on bad input."""

import time

import numpy as np
import pytest

from archjax.studies import fits


def test_power_law_interval_covers_the_truth():
    """Acceptance 3: 50 noisy power laws; the 95% interval of b covers it in >= 85%."""
    start = time.time()
    rng = np.random.default_rng(0)
    compute = np.geomspace(1e15, 1e20, 16)
    covered, estimates = 0, []
    for i in range(50):
        a, b, c = rng.uniform(20, 200), rng.uniform(0.15, 0.4), rng.uniform(0.5, 2.0)
        clean = a * (compute / 1e15) ** (-b) + c
        loss = clean * np.exp(rng.normal(0.0, 0.02, compute.size))
        fit = fits.fit_power_law(compute, loss, resamples=300, seed=i)
        lo, hi = fit.intervals["b"]
        covered += lo <= b <= hi
        estimates.append(fit.b - b)
    errors = np.array(estimates)
    assert covered >= 0.85 * 50, covered
    # Unbiased within the spread: the mean error is small next to the errors' spread.
    assert abs(errors.mean()) < 0.5 * errors.std(), (errors.mean(), errors.std())
    assert time.time() - start < 30


def test_power_law_exact_data():
    compute = np.geomspace(1, 1e6, 12)
    fit = fits.fit_power_law(compute, 10 * compute**-0.3 + 0.7, resamples=50)
    np.testing.assert_allclose([fit.a, fit.b, fit.c], [10, 0.3, 0.7], rtol=1e-3)
    lo, hi = fit.band(compute)
    assert (lo <= fit.predict(compute) + 1e-9).all() and (hi >= fit.predict(compute) - 1e-9).all()


def test_loglog_slope():
    x = np.array([8, 16, 32, 64, 128, 256.0])
    out = fits.loglog_slope(x, 0.01 * x**0.5)
    assert out["slope"] == pytest.approx(0.5) and out["intercept"] == pytest.approx(np.log(0.01))
    assert out["interval"][0] == pytest.approx(0.5) and out["interval"][1] == pytest.approx(0.5)


def test_pareto_front_by_hand():
    # (cost, accuracy): minimize cost, maximize accuracy.
    pts = [[1, 0.80], [2, 0.90], [3, 0.85], [2, 0.90], [4, 0.95], [5, 0.95]]
    mask = fits.pareto_front(pts, ["minimize", "maximize"])
    assert mask.tolist() == [True, True, False, True, True, False]
    three = fits.pareto_front([[1, 1, 1], [0, 2, 2], [2, 2, 2], [1, 1, 0]], ["minimize"] * 3)
    assert three.tolist() == [False, True, False, True]


def test_best_per_group_by_hand():
    rows = []
    for bs, best_lr in [(8, 0.01), (64, 0.1)]:
        for seed in (0, 1, 2):
            for lr in (0.001, 0.01, 0.1, 1.0):
                loss = abs(np.log10(lr) - np.log10(best_lr)) + seed * 0.01
                rows.append({"batch_size": bs, "learning_rate": lr, "seed": seed, "loss": loss})
    rows[0]["loss"] = -1.0  # seed 0 of batch 8 prefers lr 0.001: shows in the spread
    out = fits.best_per_group(rows, group="batch_size", by="learning_rate", metric="loss")
    assert [(r["group"], r["best"]) for r in out] == [(8, 0.01), (64, 0.1)]
    assert (out[0]["best_lo"], out[0]["best_hi"]) == (0.001, 0.01) and out[0]["seeds"] == 3
    assert out[1]["metric_mean"] == pytest.approx(0.01) and out[1]["metric_std"] > 0


def test_edf():
    x, f = fits.edf([3.0, 1.0, 2.0, 2.0])
    assert x.tolist() == [1, 2, 2, 3] and f.tolist() == [0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: fits.fit_power_law([1, 2, 3], [3, 2, 1]), r"more points than its 3 parameters"),
        (
            lambda: fits.fit_power_law([1, 0, 3, 4], [4, 3, 2, 1]),
            r"compute must be positive.*index 1",
        ),
        (lambda: fits.fit_power_law([1, 2, 3, 4], [4, np.nan, 2, 1]), r"loss has nan at index 1"),
        (
            lambda: fits.fit_power_law([1, 2, 3], [3, 2, 1, 0.5]),
            r"compute has 3 points but loss has 4",
        ),
        (lambda: fits.loglog_slope([1, 2], [1, 2]), r"at least 3 points"),
        (lambda: fits.pareto_front([[1, 2]], ["down", "up"]), r"'minimize' or 'maximize'"),
        (lambda: fits.best_per_group([{"a": 1}], group="a", by="b", metric="m"), r"'b' is missing"),
        (lambda: fits.edf([1.0, float("nan")]), r"values has nan at index 1"),
    ],
)
def test_bad_inputs_say_what_is_wrong(call, message):
    with pytest.raises(ValueError, match=message):
        call()
