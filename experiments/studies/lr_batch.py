r"""Learning rate vs batch size for SGD and Adam (Granziol et al., random matrix theory).

  python -m archjax.studies run experiments/studies/lr_batch.py --quick
  python -m archjax.studies fit experiments/studies/lr_batch.py --quick
  python -m archjax.studies plot experiments/studies/lr_batch.py --quick

Granziol et al., "Learning Rates as a Function of Batch Size: A Random Matrix Theory
Approach to Neural Network Training" (JMLR 2022): the largest stable learning rate
grows linearly with the batch size for SGD and as its square root for Adam, below a
critical batch size; the extremal eigenvalues of the mini-batch Hessian exceed those
of the full-data Hessian.

Trials: optimizer x batch size (8..512) x a log2 grid of learning rates x seeds, a
fixed number of epochs each. The trial is this file's own JAX function, not the main
job: a ReLU MLP on the 8x8 digits whose whole run (every epoch, every step) is one
jitted ``lax.scan`` with the learning rate as an argument, compiled once per
(optimizer, batch size) and reused by every learning rate and seed. The main job
would spend seconds per trial on set-up alone, and this grid has hundreds of trials.
A second kind of trial (``measure="hessian"``) takes the top Hessian eigenvalue
(``archjax.analysis.top_eigenvalues``) of mini-batch losses at each batch size and
of the full-data loss, at initialization and after a reference SGD run.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from archjax import studies
from archjax.studies import fits, plots

BATCHES = [8, 16, 32, 64, 128, 256, 512]
# log2 learning-rate grids wide enough to reach divergence at every batch size.
LRS = {"sgd": [2.0**k for k in range(-8, 5)], "adam": [2.0**k for k in range(-13, 1)]}
# The reference run whose parameters the Hessian trials probe.
REFERENCE = {"optimizer": "sgd", "batch_size": 64, "learning_rate": 0.125}
KEYS = {"measure", "optimizer", "batch_size", "learning_rate", "seed", "epochs", "width",
        "hessian_draws", "lanczos_steps"}  # fmt: skip


@functools.cache
def _data():
    """Digits train/test splits (archjax.data's split) as flat normalized float arrays."""
    from archjax import data

    out = []
    for split in ("train", "test"):
        ds = data.get_dataset("digits", split, image_size=8)
        x = ds.source.images.reshape(len(ds), -1).astype(np.float32) / 255.0
        out.append(((x - ds.mean[0]) / ds.std[0], ds.source.labels.astype(np.int32)))
    return out


def _init(key, width: int):
    import jax

    sizes = [64, width, width, 10]
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {"w": jax.random.normal(k, (a, b)) * np.sqrt(2.0 / a), "b": np.zeros(b, np.float32)}
        for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def _loss(params, batch):
    """Mean softmax cross-entropy of the MLP (also the Hessian trials' loss_fn)."""
    import jax
    import jax.numpy as jnp
    import optax

    x, y = batch
    for i, layer in enumerate(params):
        x = x @ layer["w"] + layer["b"]
        x = jax.nn.relu(x) if i < len(params) - 1 else x
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(x, y))


@functools.cache
def _run(optimizer: str, batch_size: int, epochs: int, n: int):
    """(params, lr, key, x, y) -> (params, per-epoch mean train loss); jitted once per shape."""
    import jax
    import optax

    make = {"sgd": optax.sgd, "adam": optax.adam}[optimizer]
    steps = n // batch_size  # each epoch: a fresh permutation, the remainder dropped

    def run(params, lr, key, x, y):
        tx = make(lr)

        def step(carry, idx):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(_loss)(params, (x[idx], y[idx]))
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        def epoch(carry, k):
            order = jax.random.permutation(k, n)[: steps * batch_size]
            carry, losses = jax.lax.scan(step, carry, order.reshape(steps, batch_size))
            return carry, losses.mean()

        (params, _), losses = jax.lax.scan(
            epoch, (params, tx.init(params)), jax.random.split(key, epochs)
        )
        return params, losses

    return jax.jit(run)


def _evaluate(params, x, y):
    import jax.numpy as jnp

    return float(_loss(params, (x, y))), float(jnp.mean(_logits(params, x).argmax(-1) == y))


def _logits(params, x):
    import jax

    for i, layer in enumerate(params):
        x = x @ layer["w"] + layer["b"]
        x = jax.nn.relu(x) if i < len(params) - 1 else x
    return x


def _train(config):
    import jax

    (x, y), _ = _data()
    key = jax.random.key(config["seed"])
    params0 = _init(jax.random.fold_in(key, 0), config["width"])
    run = _run(config["optimizer"], config["batch_size"], config["epochs"], len(x))
    params, losses = run(params0, config["learning_rate"], jax.random.fold_in(key, 1), x, y)
    return params0, params, np.asarray(losses)


def train_trial(config, trial):
    """One training run (or, with ``measure="hessian"``, the Hessian measurements)."""
    if config.get("measure") == "hessian":
        return hessian_trial(config)
    (x, y), (xt, yt) = _data()
    params0, params, losses = _train(config)
    for epoch, value in enumerate(losses):
        trial.report(epoch + 1, float(value) if np.isfinite(value) else 1e9)
    init_loss = _evaluate(params0, x, y)[0]
    train_loss, train_acc = _evaluate(params, x, y)
    test_loss, test_acc = _evaluate(params, xt, yt)
    # Diverged: the run ends at inf/NaN or no better than chance (uniform predictions).
    diverged = not (np.isfinite(train_loss) and train_loss < np.log(10.0))
    return {
        "loss": train_loss if np.isfinite(train_loss) else float("nan"),
        "train_accuracy": train_acc,
        "test_loss": test_loss if np.isfinite(test_loss) else float("nan"),
        "test_accuracy": test_acc,
        "init_loss": init_loss,
        "diverged": bool(diverged),
    }


def hessian_trial(config):
    """Top Hessian eigenvalue: mini-batches of ``batch_size`` vs all training data."""
    import jax

    (x, y), _ = _data()
    params0, params, _ = _train({**config, **REFERENCE})
    rng = np.random.default_rng(config["seed"])
    key = jax.random.key(config["seed"])
    out = {"loss": _evaluate(params, x, y)[0]}
    for name, p in (("init", params0), ("trained", params)):
        top = functools.partial(_top_eigenvalue, p, key=key, steps=config["lanczos_steps"])
        draws = []
        for _ in range(config["hessian_draws"]):
            idx = rng.choice(len(x), config["batch_size"], replace=False)
            draws.append(top((x[idx], y[idx])))
        out[f"lambda_batch_{name}"] = float(np.mean(draws))
        out[f"lambda_batch_{name}_std"] = float(np.std(draws))
        out[f"lambda_full_{name}"] = top((x, y))
    return out


def _top_eigenvalue(params, batch, *, key, steps):
    from archjax import analysis

    return float(analysis.top_eigenvalues(_loss, params, batch, key=key, num_steps=steps)[0])


def check(config):
    unknown = sorted(set(config) - KEYS)
    if unknown:
        raise KeyError(f"unknown config keys {unknown}; lr_batch knows {sorted(KEYS)}")
    if config.get("measure") not in (None, "hessian"):
        raise ValueError(f"measure must be 'hessian' or absent, got {config['measure']!r}")
    if config.get("optimizer", "sgd") not in LRS:
        raise ValueError(f"optimizer must be one of {sorted(LRS)}, got {config['optimizer']!r}")


def _per_seed(rows, optimizer):
    """Per (batch, seed): the largest learning rate that trained and the best one."""
    runs = [r for r in rows if r.get("optimizer") == optimizer and r.get("measure") is None]
    out = []
    for b in sorted({r["batch_size"] for r in runs}):
        for s in sorted({r["seed"] for r in runs}):
            mine = [r for r in runs if r["batch_size"] == b and r["seed"] == s]
            ok = [r for r in mine if not r["diverged"]]
            if not ok:
                continue
            best = min(ok, key=lambda r: r["loss"])
            out.append((b, s, max(r["learning_rate"] for r in ok), best["learning_rate"]))
    return out


def _slope(points):
    b = np.array([p[0] for p in points], float)
    lr = np.array([p[1] for p in points], float)
    if len(np.unique(b)) < 2 or len(b) < 3:
        return None
    return fits.loglog_slope(b, lr, resamples=1000)


def _segments(points):
    """Slopes over all batches, and below/above the split that best fits two lines.

    The split is reported as a critical batch only if the two slopes' intervals
    do not overlap; each side keeps at least 3 batch sizes.
    """
    out = {"all": _slope(points)}
    batches = sorted({p[0] for p in points})
    best = None
    for i in range(3, len(batches) - 2):
        crit = batches[i - 1]  # the last batch of the lower segment, shared by both
        lo = [p for p in points if p[0] <= crit]
        hi = [p for p in points if p[0] >= crit]
        rss = 0.0
        for seg in (lo, hi):
            lb, ll = np.log([p[0] for p in seg]), np.log([p[1] for p in seg])
            rss += float(((ll - np.polyval(np.polyfit(lb, ll, 1), lb)) ** 2).sum())
        if best is None or rss < best[0]:
            best = (rss, crit, lo, hi)
    if best is not None:
        below, above = _slope(best[2]), _slope(best[3])
        out["split_batch"] = best[1]
        out["below"], out["above"] = below, above
        disjoint = below["interval"][1] < above["interval"][0] or above["interval"][1] < below[
            "interval"][0]  # fmt: skip
        out["critical_batch"] = best[1] if disjoint else None
    return out


def fit(rows):
    done = [r for r in rows if r["state"] == "COMPLETE"]
    result = {}
    for opt in LRS:
        pts = _per_seed(done, opt)
        if not pts:
            continue
        result[opt] = {
            "max_lr": _segments([(b, m) for b, _, m, _ in pts]),
            "best_lr": _segments([(b, best) for b, _, _, best in pts]),
            "per_batch": [
                {
                    "batch_size": b,
                    "max_lr": [m for bb, _, m, _ in pts if bb == b],
                    "best_lr": [x for bb, _, _, x in pts if bb == b],
                }  # fmt: skip
                for b in sorted({p[0] for p in pts})
            ],
            "diverged_trials": sum(
                r["diverged"] for r in done if r.get("optimizer") == opt and "diverged" in r
            ),
        }
    hess = [r for r in done if r.get("measure") == "hessian"]
    if hess:
        table = []
        for b in sorted({r["batch_size"] for r in hess}):
            mine = [r for r in hess if r["batch_size"] == b]
            entry = {"batch_size": b, "seeds": len(mine)}
            for name in ("init", "trained"):
                ratio = [r[f"lambda_batch_{name}"] / r[f"lambda_full_{name}"] for r in mine]
                entry[f"lambda_batch_{name}"] = float(np.mean([r[f"lambda_batch_{name}"]
                                                               for r in mine]))  # fmt: skip
                entry[f"lambda_full_{name}"] = float(np.mean([r[f"lambda_full_{name}"]
                                                              for r in mine]))  # fmt: skip
                entry[f"ratio_{name}"] = float(np.mean(ratio))
                entry[f"ratio_{name}_std"] = float(np.std(ratio))
            table.append(entry)
        result["hessian"] = table
    return result


def plot(rows, curves, outdir):
    result = fit(rows)
    files = []
    for opt in LRS:
        if opt not in result:
            continue
        for kind in ("max_lr", "best_lr"):
            table = [{"group": e["batch_size"], "best": float(np.median(e[kind])),
                      "best_lo": min(e[kind]), "best_hi": max(e[kind])}
                     for e in result[opt]["per_batch"]]  # fmt: skip
            name = kind.replace("_", " ")
            path = f"{outdir}/{opt}_{kind}.png"
            files.append(plots.best_per_group(
                table, path, xlabel="batch size", ylabel=f"{name} (median, seed range)",
                slope=result[opt][kind]["all"], title=f"{opt}: {name} vs batch"))  # fmt: skip
    if "hessian" in result:
        files.append(_plot_hessian(result["hessian"], f"{outdir}/hessian.png"))
    return files


def _plot_hessian(table, path):
    from matplotlib.figure import Figure

    b = [e["batch_size"] for e in table]
    fig = Figure(figsize=(5, 3.5), dpi=120)
    ax = fig.subplots()
    for i, name in enumerate(("init", "trained")):
        ax.plot(b, [e[f"lambda_batch_{name}"] for e in table], "o-", color=f"C{i}",
                label=f"mini-batch ({name})")  # fmt: skip
        ax.axhline(table[0][f"lambda_full_{name}"], color=f"C{i}", ls="--",
                   label=f"full data ({name})")  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="top Hessian eigenvalue")
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    return path


def define(quick: bool = False) -> studies.Study:
    # Quick: two batch sizes (one compiled run per optimizer and batch size) at two seeds,
    # so that each slope is still fitted through 4 points; one Hessian trial (each batch
    # size compiles its own Hessian-vector products).
    batches = [16, 64] if quick else BATCHES
    seeds = [0, 1] if quick else [0, 1, 2]
    configs = []
    for opt, lrs in LRS.items():
        lrs = lrs[::4] if quick else lrs
        configs += studies.grid(optimizer=[opt], batch_size=batches, learning_rate=lrs,
                                seed=seeds)  # fmt: skip
    configs += studies.grid(measure=["hessian"], batch_size=batches[:1] if quick else batches,
                            seed=seeds[:1] if quick else seeds)  # fmt: skip
    return studies.Study(
        name="lr_batch" + ("_quick" if quick else ""),
        configs=configs,
        trial=train_trial,
        fixed={
            "epochs": 2 if quick else 10,
            "width": 64,
            "hessian_draws": 1 if quick else 8,
            "lanczos_steps": 5 if quick else 20,
        },  # fmt: skip
        objective="loss",
        check=check,
        fit=fit,
        plot=plot,
    )
