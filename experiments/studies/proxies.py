r"""Zero-cost proxies vs trained accuracy, against parameter count and FLOPs as baselines.

  python -m archjax.studies run experiments/studies/proxies.py --quick
  python -m archjax.studies fit experiments/studies/proxies.py --quick
  python -m archjax.studies plot experiments/studies/proxies.py --quick

Zero-cost proxies score an untrained network from one batch and are meant to rank
architectures by their trained accuracy (grad-norm, SNIP, SynFlow, NASWOT, SWAP:
:mod:`archjax.nas.proxies`). GradSign (Zhang & Jia, 2022) and SWAP-NAS judge them "by
Spearman's rho"; the question here is whether each beats the trivial baselines.

Ground truth is the RegNet design-space study (``experiments/studies/regnet_space.py``):
its 128 networks (64 AnyNetX + 64 RegNetX; 2 in quick mode), each trained by the main
job on 16 px digits. This study has the same configs, so a trial rebuilds the same
network, scores it at ``init_seeds`` initializations on one fixed batch of train
images (the mean score is recorded) and records its parameter count and the FLOPs the
RegNet study uses. ``fit`` joins the scores with the RegNet study's rows by config
key, read from its store: ``$ARCHJAX_PROXIES_GROUND_TRUTH`` (a study workdir), by
default ``runs/studies/regnet_space`` (``..._quick`` in quick mode), the engine's
default workdir. It reports each score's Spearman correlation with test accuracy
over the networks trained so far, a bootstrap 95% interval over networks, and the
paired bootstrap probability that it beats FLOPs.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np
import optuna
import scipy.stats
from matplotlib.figure import Figure

from archjax import models, nas, studies
from experiments.studies import quant_train, regnet_space

ENV_GROUND_TRUTH = "ARCHJAX_PROXIES_GROUND_TRUTH"
BASELINES = ("params", "flops")
SCORES = (*nas.PROXIES, *BASELINES)


def _model(config):
    kw = {k.split(".", 1)[1]: v for k, v in config.items() if k.startswith("model_kwargs.")}
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
    return models.create("regnetx_002", num_classes=10, **kw)


def score_trial(config, trial):
    """Every proxy of the untrained network (mean over init seeds), its params and FLOPs."""
    model = _model(config)
    x, y, _, _ = quant_train.digits(regnet_space.IMAGE_SIZE)
    batch = {"image": x[: config["batch_size"]], "label": y[: config["batch_size"]]}
    scores = {name: [] for name in nas.PROXIES}
    init = jax.jit(model.init)  # one program; eager init would compile op by op
    for seed in range(config["init_seeds"]):
        variables = init(jax.random.key(seed), batch["image"][:1])
        for name in nas.PROXIES:
            scores[name].append(nas.score(name, model, variables, batch))
    size = regnet_space.IMAGE_SIZE
    return {
        **{name: float(np.mean(v)) for name, v in scores.items()},
        "params": models.count_params(model, (1, size, size, 1)),
        "flops": float(
            models.regnet_flops(regnet_space.stage_config(config), image_size=size, num_classes=10)
        ),  # fmt: skip
    }


def ground_truth(quick: bool) -> dict[str, float]:
    """Test accuracy per config key of the RegNet study's completed trials."""
    name = regnet_space.define(quick).name
    workdir = os.environ.get(ENV_GROUND_TRUTH, os.path.join("runs", "studies", name))
    path = os.path.join(workdir, "study.db")
    if not os.path.exists(path):
        raise studies.StudyError(
            f"No ground truth at {path}: run `python -m archjax.studies run "
            f"experiments/studies/regnet_space.py{' --quick' if quick else ''}` or set "
            f"{ENV_GROUND_TRUTH} to its workdir."
        )
    storage = studies.open_storage(studies.sqlite_url(workdir))
    opt = optuna.load_study(study_name=name, storage=storage)
    return {r["key"]: r["test_accuracy"] for r in studies.rows(opt) if r["state"] == "COMPLETE"}


def _table(rows, quick):
    truth = ground_truth(quick)
    done = [r for r in rows if r["state"] == "COMPLETE" and r["key"] in truth]
    acc = np.array([truth[r["key"]] for r in done])
    return {s: np.array([r[s] for r in done], float) for s in SCORES}, acc, done


def _spearman(a, b) -> float:
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(scipy.stats.spearmanr(a, b).statistic)


def fit(rows, *, quick: bool = False, resamples: int = 1000):
    scores, acc, done = _table(rows, quick)
    n = acc.size
    out = {"n": n, "failed": sum(r["state"] == "FAIL" for r in rows)}
    idx = np.random.default_rng(0).integers(0, n, (resamples, n)) if n else np.zeros((0, 0), int)
    boot = {s: np.array([_spearman(v[i], acc[i]) for i in idx]) for s, v in scores.items()}
    for s, v in scores.items():
        b = boot[s][np.isfinite(boot[s])]
        lo, hi = np.quantile(b, [0.025, 0.975]) if b.size else (np.nan, np.nan)
        both = np.isfinite(boot[s]) & np.isfinite(boot["flops"])
        out[s] = {
            "spearman": _spearman(v, acc),
            "ci95": [float(lo), float(hi)],
            "p_beats_flops": float(np.mean(boot[s][both] > boot["flops"][both]))
            if both.any() else None,
        }  # fmt: skip
    for space in ("AnyNetX", "RegNetX"):
        m = np.array([regnet_space.space(r) == space for r in done], bool)
        out[f"spearman_{space}"] = {s: _spearman(v[m], acc[m]) for s, v in scores.items()}
    return out


def plot(rows, curves, outdir, *, quick: bool = False):
    result = fit(rows, quick=quick, resamples=300)
    scores, acc, _ = _table(rows, quick)
    os.makedirs(outdir, exist_ok=True)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    rho = np.array([result[s]["spearman"] for s in SCORES])
    ci = np.array([result[s]["ci95"] for s in SCORES])
    colors = ["C0" if s in nas.PROXIES else "0.5" for s in SCORES]
    ax.barh(range(len(SCORES)), rho, color=colors,
            xerr=[np.abs(rho - ci[:, 0]), np.abs(ci[:, 1] - rho)], capsize=3)  # fmt: skip
    ax.set_yticks(range(len(SCORES)), SCORES)
    ax.axvline(0, color="k", lw=0.8)
    title = f"zero-cost proxies vs baselines (grey), {result['n']} RegNet-study nets"
    ax.set(xlabel="Spearman rho with test accuracy (95% bootstrap)", xlim=(-1, 1), title=title)
    fig.tight_layout()
    bars = os.path.join(outdir, "proxies_spearman.png")
    fig.savefig(bars, dpi=120)
    fig = Figure(figsize=(10, 4.5))
    for ax, s in zip(fig.subplots(2, 4).ravel(), SCORES, strict=False):
        ax.scatter(scipy.stats.rankdata(scores[s]), acc, s=8)
        ax.set(title=f"{s} (rho {result[s]['spearman']:.2f})", xlabel="rank of score")
    fig.axes[0].set_ylabel("test accuracy")
    for ax in fig.axes[len(SCORES) :]:
        ax.set_axis_off()
    fig.tight_layout()
    scatter = os.path.join(outdir, "proxies_scatter.png")
    fig.savefig(scatter, dpi=110)
    return [bars, scatter]


def define(quick: bool = False) -> studies.Study:
    return studies.Study(
        name="proxies" + ("_quick" if quick else ""),
        # The RegNet study's configs: same config keys, so the rows join.
        configs=list(regnet_space.define(quick).configs),
        trial=score_trial,
        objective="synflow",
        direction="maximize",
        fit=functools.partial(fit, quick=quick),
        plot=functools.partial(plot, quick=quick),
        fixed={"batch_size": 64, "init_seeds": 1 if quick else 3},
    )
