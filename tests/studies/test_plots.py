"""Every plot kind writes a PNG from the fits' outputs."""

import numpy as np

from archjax.studies import fits, plots


def test_every_plot_kind_writes_a_png(tmp_path):
    compute = np.geomspace(1e12, 1e16, 10)
    loss = 30 * (compute / 1e12) ** -0.3 + 1.0
    fit = fits.fit_power_law(compute, loss, resamples=50)
    table = [{"group": g, "best": 0.01 * g, "best_lo": 0.005 * g, "best_hi": 0.02 * g}
             for g in (8, 32, 128)]  # fmt: skip
    slope = fits.loglog_slope([8, 32, 128], [0.08, 0.32, 1.28], resamples=50)
    mask = fits.pareto_front(np.stack([compute, -loss], 1), ["minimize", "minimize"])
    paths = [
        plots.scaling_law(compute, loss, fit, str(tmp_path / "law.png"), frontier=mask),
        plots.pareto(compute, loss, mask, str(tmp_path / "pareto.png"), xlabel="c", ylabel="l"),
        plots.best_per_group(
            table, str(tmp_path / "best.png"), xlabel="b", ylabel="lr", slope=slope
        ),  # fmt: skip
        plots.edfs({"a": [1, 2, 3], "b": [2, 3]}, str(tmp_path / "edf.png")),
        plots.curves({0: ([0, 1, 2], [3, 2, 1])}, str(tmp_path / "curves.png")),
    ]
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
