r"""Single-Path NAS: the searched network vs random networks of the same MACs, trained alone.

  python -m archjax.studies run experiments/studies/single_path.py --quick
  python -m archjax.studies fit experiments/studies/single_path.py --quick
  python -m archjax.studies plot experiments/studies/single_path.py --quick

Stamoulis et al., "Single-Path NAS: Designing Hardware-Efficient ConvNets in less than
4 Hours" (2019): one "single-path over-parameterized ConvNet" whose shared superkernels
encode every kernel-size and expansion choice, searched by gradient "in a few epochs"
under a runtime-aware loss (:mod:`archjax.nas.single_path`).

Each trial (one seed) searches a supernet of MBConv layers on 8x8 digits with
``cross-entropy + cost_weight * max(log(MACs / target), 0)`` (weights and thresholds
updated together, Adam with a faster rate for the thresholds), decodes the network,
trains it from scratch (the library's train step, :mod:`quant_train`) and trains
``random_nets`` uniformly drawn networks of the same search space whose MACs are within
``tolerance`` of the searched network's, with the same budget. The claim checked is the
direction: the searched network is more accurate than random networks of equal cost.
The stand-alone nets are not :func:`common.train_trial` runs because they are not a
registered family: :class:`archjax.nas.single_path.SinglePathNet` takes the decoded
architecture, which the main job's model registry does not know.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.figure import Figure

from archjax import studies
from archjax.nas import single_path as sp
from archjax.studies import plots
from archjax.train import create_train_state
from experiments.studies import quant_train

FULL_SPACE = dict(widths=(8, 12, 16), depths=(2, 2, 2), strides=(1, 2, 2), stem_width=8)
QUICK_SPACE = dict(widths=(4, 8), depths=(2, 1), strides=(1, 2), stem_width=4)


def space_of(config) -> sp.SinglePathSpace:
    return sp.SinglePathSpace(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in config["space"].items()},
        kernels=(3, 5),
        expansions=(3, 6),
        image_size=8,
        in_channels=1,
    )


def _search_tx(config) -> optax.GradientTransformation:
    """Adam on the weights; Adam with its own rate on the ``t_*`` thresholds."""

    def label(params):
        return jax.tree.map_with_path(
            lambda path, _: "t" if str(path[-1].key).startswith("t_") else "w", params
        )

    return optax.multi_transform(
        {"w": optax.adam(config["search_lr"]), "t": optax.adam(config["threshold_lr"])}, label
    )


def search(space: sp.SinglePathSpace, config, x, y, report) -> tuple[sp.SinglePathArch, dict]:
    """Single-Path search on ``(x, y)``; the decoded architecture and the search's record."""
    net = sp.SinglePathSuperNet(space)
    tx = _search_tx(config)
    key = jax.random.key(config["seed"])
    state = create_train_state(net, tx, rng=key, input_shape=(1, *x.shape[1:]))
    step = jax.jit(
        sp.make_search_step(
            net, tx, cost_weight=config["cost_weight"], target_macs=config["target_macs"]
        )
    )
    rng = np.random.default_rng(config["seed"])
    every = max(1, config["search_steps"] // 20)
    for i in range(config["search_steps"]):
        idx = rng.integers(0, len(x), config["batch_size"])
        state, m = step(state, {"image": jnp.asarray(x[idx]), "label": jnp.asarray(y[idx])})
        if (i + 1) % every == 0 or i + 1 == config["search_steps"]:
            report(i + 1, float(m["macs"]))
    arch = sp.decode(space, state.params)
    return arch, {"search_train_accuracy": float(m["accuracy"])}


def random_archs(space, macs: int, tolerance: float, n: int, seed: int, *, exclude=()):
    """Up to ``n`` distinct uniform draws of ``space`` with MACs within ``tolerance``."""
    rng = np.random.default_rng(10_000 + seed)
    found: list[sp.SinglePathArch] = []
    for _ in range(20_000):
        arch = space.sample(rng)
        if arch in found or arch in exclude:
            continue
        if abs(sp.arch_macs(space, arch) - macs) <= tolerance * macs:
            found.append(arch)
            if len(found) == n:
                break
    return found


def _train_alone(space, arch, config, data) -> float:
    xtr, ytr, xte, yte = data
    model = sp.SinglePathNet(space, arch)
    steps, seed, batch = config["train_steps"], config["seed"], config["batch_size"]
    variables = quant_train.train(model, xtr, ytr, steps=steps, seed=seed, batch_size=batch)
    return quant_train.accuracy(model, variables, xte, yte)


def run_trial(config, trial):
    """Search, decode, then the searched and the random networks trained from scratch."""
    space = space_of(config)
    data = quant_train.digits(8)
    start = time.time()
    arch, record = search(space, config, data[0], data[1], trial.report)
    search_time = time.time() - start
    macs = sp.arch_macs(space, arch)
    randoms = random_archs(space, macs, config["tolerance"], config["random_nets"], config["seed"],
                           exclude=(arch,))  # fmt: skip
    nets = [
        {"kernels": list(a.kernels), "expansions": list(a.expansions),
         "macs": sp.arch_macs(space, a), "accuracy": _train_alone(space, a, config, data)}
        for a in randoms
    ]  # fmt: skip
    return {
        "searched_arch": json.dumps({"kernels": arch.kernels, "expansions": arch.expansions}),
        "searched_macs": macs,
        "searched_accuracy": _train_alone(space, arch, config, data),
        "random_nets_json": json.dumps(nets),  # metrics are numbers or strings
        "random_found": len(nets),
        "largest_macs": sp.arch_macs(space, space.largest()),
        "target": config["target_macs"],
        "search_time": search_time,
        **record,
    }


def _done(rows):
    """Completed rows, by seed, with the JSON metrics decoded."""
    done = sorted((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: r["seed"])
    for r in done:
        r["arch"] = json.loads(r["searched_arch"])
        r["nets"] = json.loads(r["random_nets_json"])
    return done


def fit(rows):
    done = _done(rows)
    out = {"failed": sum(r["state"] == "FAIL" for r in rows), "seeds": len(done)}
    searched = np.array([r["searched_accuracy"] for r in done])
    pairs, per_seed = [], []
    for r in done:
        rand = np.asarray([n["accuracy"] for n in r["nets"]], float)
        pairs += [r["searched_accuracy"] - a for a in rand]
        per_seed.append({
            "seed": r["seed"], "kernels": r["arch"]["kernels"],
            "expansions": r["arch"]["expansions"], "macs": r["searched_macs"],
            "accuracy": r["searched_accuracy"], "random_n": int(rand.size),
            "random_mean": float(rand.mean()) if rand.size else None,
            "random_best": float(rand.max()) if rand.size else None,
            "beats_fraction": float(np.mean(r["searched_accuracy"] > rand)) if rand.size else None,
            "max_macs_gap": float(max(abs(n["macs"] / r["searched_macs"] - 1) for n in r["nets"]))
            if rand.size else None,
        })  # fmt: skip
    rand_all = np.asarray([n["accuracy"] for r in done for n in r["nets"]], float)
    out.update(
        per_seed=per_seed,
        searched_mean=float(searched.mean()),
        random_mean=float(rand_all.mean()) if rand_all.size else None,
        random_nets=int(rand_all.size),
        target_macs=done[0]["target"] if done else None,
        largest_macs=done[0]["largest_macs"] if done else None,
    )
    if pairs:
        pairs = np.asarray(pairs)
        boot = np.random.default_rng(0).choice(pairs, (2000, pairs.size)).mean(1)
        out["diff_searched_minus_random"] = float(pairs.mean())
        out["diff_ci95"] = [float(q) for q in np.quantile(boot, [0.025, 0.975])]
        out["beats_fraction"] = float(np.mean(pairs > 0))
        out["ties_fraction"] = float(np.mean(pairs == 0))
    return out


def _scatter(done, path):
    """Accuracy vs MACs: each seed's searched network (star) and its random networks."""
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    for c, r in enumerate(done):
        ax.scatter([n["macs"] for n in r["nets"]], [n["accuracy"] for n in r["nets"]], s=16,
                   color=f"C{c}", alpha=0.5, label=f"seed {r['seed']}: random")  # fmt: skip
        ax.scatter([r["searched_macs"]], [r["searched_accuracy"]], s=120, marker="*",
                   color=f"C{c}", edgecolor="k", label=f"seed {r['seed']}: searched")  # fmt: skip
    if done:
        ax.axvline(done[0]["target"], color="0.5", ls="--", lw=1, label="MACs target")
    ax.set(xlabel="MACs per image", ylabel="test accuracy (digits, trained alone)",
           title="Single-Path NAS vs random nets of equal MACs")  # fmt: skip
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)  # plots.curves made the directory
    return path


def plot(rows, curves, outdir):
    done = _done(rows)
    labels = {r["trial"]: f"seed {r['seed']}" for r in done}
    return [
        plots.curves(
            curves,
            f"{outdir}/search_macs.png",
            ylabel="MACs of the selected network",
            labels=labels,
            title="MACs during the search",
        ),  # fmt: skip
        _scatter(done, f"{outdir}/single_path.png"),
    ]


def define(quick: bool = False) -> studies.Study:
    return studies.Study(
        name="single_path" + ("_quick" if quick else ""),
        configs=studies.grid(seed=[0] if quick else [0, 1, 2]),
        trial=run_trial,
        objective="searched_accuracy",
        direction="maximize",
        fit=fit,
        plot=plot,
        fixed={
            "space": QUICK_SPACE if quick else FULL_SPACE,
            "target_macs": 4e4 if quick else 1.6e5,
            "cost_weight": 1.0,
            "search_steps": 4 if quick else 300,
            "search_lr": 3e-3,
            "threshold_lr": 0.05,
            "batch_size": 32,
            "train_steps": 4 if quick else 200,
            "random_nets": 1 if quick else 4,
            "tolerance": 0.25 if quick else 0.1,
        },
    )
