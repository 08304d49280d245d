r"""RegNet design space vs AnyNetX: error EDFs and the quantized linear fit of good widths.

Radosavovic et al., "Designing Network Design Spaces" (CVPR 2020). The same number
of networks is drawn from AnyNetX (free per-stage depth, width and group width;
``archjax.models.sample_anynet``) and from RegNetX (``sample_regnet``) in one FLOP
range, each trained briefly by the main job on digits; the error EDFs of the two
populations are compared, and ``w0, wa, wm`` of the quantized linear rule are
fitted to the per-block widths of every AnyNet network (the paper's ``e_fit``).

  python -m archjax.studies run experiments/studies/regnet_space.py --quick
  python -m archjax.studies fit experiments/studies/regnet_space.py --quick
  python -m archjax.studies plot experiments/studies/regnet_space.py --quick
"""

import numpy as np
import scipy.stats
from matplotlib.figure import Figure

from archjax import models, studies
from archjax.models.regnet_space import RegNetConfig
from archjax.studies import plots
from experiments.studies import common

IMAGE_SIZE = 16  # digits upsampled; the stem and four stride-2 stages reach 1x1
QUANT = 8  # the paper's width quantum
TOP = 5  # best models per space whose widths are fitted and listed


def _sampler_ranges(quick: bool) -> dict:
    """One FLOP range and one depth / width / group range for both spaces."""
    return dict(
        flops_budget=1.5e5 if quick else 4e5,  # multiply-adds at IMAGE_SIZE, 10 classes
        lower_fraction=0.5,
        image_size=IMAGE_SIZE,
        num_classes=10,
        group_widths=(1, 2, 4, 8, 16),
    )


def sample_configs(n: int, quick: bool) -> list[dict]:
    """``n`` AnyNetX and ``n`` RegNetX networks (alternating) as main-job overrides."""
    ranges = _sampler_ranges(quick)
    stage_depth = 1 if quick else 3
    anynet, regnet = [], []
    for i in range(n):
        a = models.sample_anynet(i, max_stage_depth=stage_depth, max_width=128, **ranges)
        anynet.append({"model_kwargs.stage_depths": list(a.depths),
                       "model_kwargs.stage_widths": list(a.widths),
                       "model_kwargs.stage_group_widths": list(a.group_widths),
                       "model_kwargs.bottleneck_ratio": a.bottleneck_ratio})  # fmt: skip
        p = models.sample_regnet(i, max_depth=4 * stage_depth, max_w0=128, max_wa=128.0,
                                 bottleneck_ratios=(1.0, 0.5, 0.25), **ranges)  # fmt: skip
        regnet.append({"model_kwargs.depth": p.depth, "model_kwargs.w0": p.w0,
                       "model_kwargs.wa": p.wa, "model_kwargs.wm": p.wm,
                       "model_kwargs.group_width": p.group_width,
                       "model_kwargs.bottleneck_ratio": p.bottleneck_ratio})  # fmt: skip
    return [c for pair in zip(anynet, regnet, strict=True) for c in pair]  # a partial run: both


def space(row: dict) -> str:
    return "AnyNetX" if "model_kwargs.stage_widths" in row else "RegNetX"


def stage_config(row: dict) -> RegNetConfig:
    """The per-stage network a row trained (the model's own width adjustment)."""
    kw = {k.split(".", 1)[1]: v for k, v in row.items() if k.startswith("model_kwargs.")}
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
    return models.create("regnetx_002", num_classes=10, **kw).stage_config()


def block_widths(config: RegNetConfig) -> np.ndarray:
    return np.repeat(config.widths, config.depths).astype(float)


def fit_quantized_linear(widths) -> dict:
    """``w0, wa, wm`` whose quantized linear rule best explains per-block ``widths``.

    A grid search minimizing the paper's ``e_fit``, the mean over blocks of
    ``|log(w_j / w_hat_j)|`` with ``w_hat_j`` the rule's quantized width (Sec. 3.3).
    """
    w = np.asarray(widths, float)
    j = np.arange(w.size)
    w0 = QUANT * np.arange(1, 33, dtype=float)[:, None, None, None]
    wa = np.concatenate([[0.0], np.geomspace(0.5, 256, 60)])[None, :, None, None]
    wm = np.linspace(1.5, 3.0, 31)[None, None, :, None]
    s = np.round(np.log((w0 + wa * j) / w0) / np.log(wm))
    pred = np.maximum(np.round(w0 * wm**s / QUANT) * QUANT, QUANT)
    e_fit = np.abs(np.log(w / pred)).mean(-1)
    i = np.unravel_index(np.argmin(e_fit), e_fit.shape)
    return {"w0": float(w0[i[0], 0, 0, 0]), "wa": float(wa[0, i[1], 0, 0]),
            "wm": float(wm[0, 0, i[2], 0]), "e_fit": float(e_fit[i])}  # fmt: skip


def _table(rows):
    done = [r for r in rows if r["state"] == "COMPLETE"]
    out = []
    for r in done:
        cfg = stage_config(r)
        out.append({"trial": r["trial"], "space": space(r), "error": 1 - r["test_accuracy"],
                    "flops": models.regnet_flops(cfg, image_size=IMAGE_SIZE, num_classes=10),
                    "depths": list(cfg.depths), "widths": list(cfg.widths),
                    **fit_quantized_linear(block_widths(cfg))})  # fmt: skip
    return out


def fit(rows):
    table = _table(rows)
    err = {
        s: np.array([t["error"] for t in table if t["space"] == s]) for s in ("AnyNetX", "RegNetX")
    }
    out = {"failed": sum(r["state"] == "FAIL" for r in rows)}
    for s, e in err.items():
        out[s] = {"n": int(e.size), "best": float(e.min()), "median": float(np.median(e)),
                  "mean": float(e.mean()), "q25": float(np.quantile(e, 0.25))}  # fmt: skip
    ks = scipy.stats.ks_2samp(err["AnyNetX"], err["RegNetX"])
    out["ks_statistic"], out["ks_pvalue"] = float(ks.statistic), float(ks.pvalue)
    rng = np.random.default_rng(0)  # bootstrap of the median error difference AnyNetX - RegNetX
    boot = {s: np.median(rng.choice(e, (2000, e.size)), axis=1) for s, e in err.items()}
    diffs = boot["AnyNetX"] - boot["RegNetX"]
    out["median_diff_anynet_minus_regnet"] = float(
        np.median(err["AnyNetX"]) - np.median(err["RegNetX"])
    )
    out["median_diff_ci95"] = [float(q) for q in np.quantile(diffs, [0.025, 0.975])]
    anynet = sorted((t for t in table if t["space"] == "AnyNetX"), key=lambda t: t["error"])
    e_fit = np.array([t["e_fit"] for t in anynet])
    rho = scipy.stats.spearmanr([t["error"] for t in anynet], e_fit)
    out["anynet_efit_vs_error_spearman"] = [float(rho.statistic), float(rho.pvalue)]
    k = max(1, len(anynet) // 4)
    out["anynet_efit_best_quarter"] = float(e_fit[:k].mean())
    out["anynet_efit_rest"] = float(e_fit[k:].mean()) if len(anynet) > k else None
    keys = ("trial", "error", "depths", "widths", "w0", "wa", "wm", "e_fit")
    out["best_anynet_fits"] = [{k_: t[k_] for k_ in keys} for t in anynet[:TOP]]
    regnet = sorted((t for t in table if t["space"] == "RegNetX"), key=lambda t: t["error"])
    out["best_regnet"] = [{k_: t[k_] for k_ in keys} for t in regnet[:TOP]]
    return out


def _widths_plot(table, path):
    """Per-block widths of the best AnyNetX networks with their fitted quantized linear rule."""
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    best = sorted((t for t in table if t["space"] == "AnyNetX"), key=lambda t: t["error"])[:TOP]
    for c, t in enumerate(best):
        w = np.repeat(t["widths"], t["depths"])
        j = np.arange(w.size)
        s = np.round(np.log((t["w0"] + t["wa"] * j) / t["w0"]) / np.log(t["wm"]))
        pred = np.maximum(np.round(t["w0"] * t["wm"] ** s / QUANT) * QUANT, QUANT)
        ax.plot(j, w, "o", color=f"C{c}", label=f"err {t['error']:.3f}, e_fit {t['e_fit']:.2f}")
        ax.step(j, pred, where="mid", color=f"C{c}", lw=1)
    ax.set(xlabel="block index j", ylabel="width", yscale="log",
           title="best AnyNetX widths (dots) and fitted quantized linear rule")  # fmt: skip
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)  # plots.edfs made the directory
    return path


def plot(rows, curves, outdir):
    table = _table(rows)
    errors = {s: [t["error"] for t in table if t["space"] == s] for s in ("AnyNetX", "RegNetX")}
    return [
        plots.edfs(
            errors,
            f"{outdir}/error_edf.png",
            xlabel="test error (digits)",
            title="error EDF, same FLOP range",
        ),  # fmt: skip
        _widths_plot(table, f"{outdir}/best_widths.png"),
    ]


def define(quick: bool = False) -> studies.Study:
    # Quick: one network per space (each network is its own set of compiled programs).
    # 64 per space since session 9: the first 32 (session 6) left the EDFs indistinguishable;
    # the follow-up, fixed before it ran, adds the samplers' next 32 draws to the same store.
    n = 1 if quick else 64
    return studies.Study(
        name="regnet_space" + ("_quick" if quick else ""),
        configs=sample_configs(n, quick),
        trial=common.train_trial,
        check=common.check_train_config,
        setup=common.setup,
        objective="test_loss",
        fit=fit,
        plot=plot,
        fixed={
            "model": "regnetx_002",
            "image_size": IMAGE_SIZE,
            "batch_size": 64,
            "num_steps": 4 if quick else 150,
            "warmup_steps": 2 if quick else 10,
            "log_every": 4 if quick else 50,
            "eval_every": 4 if quick else 150,
            "checkpoint_every": 4 if quick else 150,
            "num_devices": 1,
        },  # fmt: skip
    )
