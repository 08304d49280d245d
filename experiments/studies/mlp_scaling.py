r"""Example study: held-out loss vs training compute of small MLPs on digits.

  python -m archjax.studies run experiments/studies/mlp_scaling.py --quick
  python -m archjax.studies fit experiments/studies/mlp_scaling.py --quick
  python -m archjax.studies plot experiments/studies/mlp_scaling.py --quick

Widths x training steps; the compute-optimal frontier is fitted as L = a C^-b + c.
The trial is plain NumPy (a second per trial), so the whole pipeline runs anywhere.
"""

import numpy as np
from sklearn.datasets import load_digits

from archjax import studies
from archjax.studies import fits, plots


def train_mlp(config, trial):
    """A tanh MLP trained with SGD; returns the held-out loss and the compute used."""
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    rng = np.random.default_rng(config["seed"])
    order = rng.permutation(len(x))
    train, test = order[:1200], order[1200:]
    w1 = rng.normal(0, 1 / 8, (64, config["width"]))
    w2 = rng.normal(0, 1 / np.sqrt(config["width"]), (config["width"], 10))

    def forward(xb):
        h = np.tanh(xb @ w1)
        z = h @ w2
        p = np.exp(z - z.max(1, keepdims=True))
        return h, p / p.sum(1, keepdims=True)

    for step in range(config["steps"]):
        idx = rng.choice(train, config["batch_size"])
        h, p = forward(x[idx])
        g = (p - np.eye(10)[y[idx]]) / len(idx)  # softmax cross-entropy gradient
        gh = (g @ w2.T) * (1 - h**2)
        w2 -= config["learning_rate"] * h.T @ g
        w1 -= config["learning_rate"] * x[idx].T @ gh
        if (step + 1) % 50 == 0:
            trial.report(
                step + 1, float(-np.log(forward(x[test])[1][np.arange(len(test)), y[test]]).mean())
            )
    _, p = forward(x[test])
    params = w1.size + w2.size
    return {
        "loss": float(-np.log(p[np.arange(len(test)), y[test]]).mean()),
        "accuracy": float((p.argmax(1) == y[test]).mean()),
        "params": params,
        "train_flops": 6.0 * params * config["steps"] * config["batch_size"],
    }


def fit(rows):
    done = [r for r in rows if r["state"] == "COMPLETE"]
    pts = np.array([[r["train_flops"], r["loss"]] for r in done])
    front = fits.pareto_front(pts, ["minimize", "minimize"])
    law = fits.fit_power_law(pts[front, 0], pts[front, 1], resamples=500)
    return {"frontier_points": int(front.sum()), **law.as_dict()}


def plot(rows, curves, outdir):
    done = [r for r in rows if r["state"] == "COMPLETE"]
    pts = np.array([[r["train_flops"], r["loss"]] for r in done])
    front = fits.pareto_front(pts, ["minimize", "minimize"])
    law = fits.fit_power_law(pts[front, 0], pts[front, 1], resamples=500)
    labels = {r["trial"]: f"w={r['width']}, {r['steps']} steps" for r in done}
    return [
        plots.scaling_law(
            pts[:, 0],
            pts[:, 1],
            law,
            f"{outdir}/loss_vs_compute.png",
            frontier=front,
            ylabel="held-out loss",
        ),  # fmt: skip
        plots.curves(curves, f"{outdir}/curves.png", ylabel="held-out loss", labels=labels),
    ]


def define(quick: bool = False) -> studies.Study:
    widths = [2, 4, 8, 16] if quick else [2, 4, 8, 16, 32, 64]
    steps = [100, 400] if quick else [100, 200, 400, 800, 1600]
    return studies.Study(
        name="mlp_scaling" + ("_quick" if quick else ""),
        configs=studies.grid(width=widths, steps=steps, seed=[0]),
        trial=train_mlp,
        fixed={"batch_size": 32, "learning_rate": 0.5},
        fit=fit,
        plot=plot,
    )
