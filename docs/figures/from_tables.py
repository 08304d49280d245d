"""Figures for two sections of docs/reproductions.md, drawn from the accuracies recorded
in their tables (runs of 2026-11-22; the numbers are copied from those tables)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

# Quantization on digits (issue 4): one seed per bar; 1 test image = 0.28 points.
names = [
    "float",
    "QAT w8a8",
    "QAT w4a4",
    "QAT binary",
    "PTQ w8a8",
    "PTQ w4a8\nplain",
    "PTQ w4a8\nfolded",
    "PTQ w4a8\nbn_reest",
]
acc = [0.9944, 0.9944, 0.9861, 0.9916, 0.9944, 0.9805, 0.9833, 0.9972]
fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
ax.bar(range(len(acc)), np.array(acc) * 100, color=["gray"] + ["C0"] * 3 + ["C1"] * 4)
ax.axhline(99.44 - 0.28, ls=":", c="k", lw=0.8, label="float - 1 test image")
ax.set_xticks(range(len(acc)), names, fontsize=7)
ax.set_ylim(97.5, 100)
ax.set_ylabel("test accuracy (%)")
ax.set_title("ResNet-20 on digits: QAT (blue) and PTQ (orange), one seed each", fontsize=9)
ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig("docs/figures/quant_digits.png")

# Study 7: low-bit Adam state, three seeds each.
rows = {
    "float32": [0.9944, 0.9916, 0.9833],
    "8-bit": [0.9861, 0.9944, 0.9972],
    "4-bit": [0.9916, 0.9916, 0.9944],
}
fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=100)
for i, v in enumerate(rows.values()):
    v = np.array(v) * 100
    ax.scatter([i] * 3, v, c="C0", s=18)
    ax.errorbar(i + 0.15, v.mean(), yerr=v.std(ddof=1), fmt="o", c="C3", capsize=3)
ax.set_xticks(range(3), [f"{k} Adam" for k in rows])
ax.set_ylabel("test accuracy (%)")
ax.set_title("Adam state bits, ResNet-20 on digits\n(dots: seeds; red: mean +- s.d.)", fontsize=9)
fig.tight_layout()
fig.savefig("docs/figures/optim_state_bits.png")
