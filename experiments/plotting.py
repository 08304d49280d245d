"""Training-curve plots from ``metrics.jsonl``."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")  # files only; no display needed on a TPU VM or in CI
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(path: str) -> list[dict]:
    """The records of a ``metrics.jsonl`` file, in order."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(metrics_path: str, out_path: str, *, title: str = "", train_note: str = "") -> None:
    """Writes a two-panel PNG: loss and accuracy against step, train and test.

    ``train_note`` is appended to the train legend, e.g. to say that the train loss
    is measured against label-smoothed targets and so does not go to zero.
    """
    records = read_metrics(metrics_path)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-"), ("test", "o-")):
        rows = [r for r in records if r.get("split") == split]
        if not rows:
            continue
        steps = [r["step"] for r in rows]
        label = split + (train_note if split == "train" else "")
        ax_loss.plot(steps, [r["loss"] for r in rows], style, label=label)
        ax_acc.plot(steps, [r["accuracy"] for r in rows], style, label=split)
    ax_loss.set(xlabel="step", ylabel="cross-entropy", title=f"{title} loss".strip())
    ax_acc.set(xlabel="step", ylabel="top-1 accuracy", title=f"{title} accuracy".strip())
    ax_acc.set_ylim(0, 1)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
