"""The SAM study: its quick mode end to end, and the seed-paired gain it reports."""

import json

import pytest

from archjax.studies.__main__ import main
from experiments.studies import sam

SPEC = "experiments/studies/sam.py"


def _row(model, rho, seed, acc):
    return {"state": "COMPLETE", "model": model, "sam_rho": rho, "seed": seed, "test_accuracy": acc}


def test_gain_is_paired_by_seed():
    rows = [_row("resnet8", 0.0, s, 0.5 + 0.1 * s) for s in range(3)]
    rows += [_row("resnet8", 0.05, s, 0.52 + 0.1 * s + 0.01 * s) for s in range(3)]
    rows.append({"state": "FAIL"})
    result = sam.fit(rows)
    gain = result["ResNet"]
    assert gain["per_seed_gain"] == pytest.approx([0.02, 0.03, 0.04])
    assert gain["gain"] == pytest.approx(0.03) and result["failed"] == 1
    lo, hi = gain["gain_ci95"]
    assert lo < 0.03 < hi and hi - lo < 0.05  # seed pairing removes the 0.1-per-seed offset


def test_sharpness_ratio_is_paired_by_seed_on_a_log_scale():
    rows = [{**_row("vit_tiny_patch16_224", 0.0, s, 0.9), "train_hessian_top": 10.0 * 10**s}
            for s in range(3)]  # fmt: skip
    rows += [{**_row("vit_tiny_patch16_224", 0.05, s, 0.9), "train_hessian_top": r * 10**s}
             for s, r in enumerate((2.0, 2.5, 1.6))]  # fmt: skip
    sharp = sam.fit(rows)["sharpness"]["ViT"]
    assert sharp["ratio"] == pytest.approx((0.2 * 0.25 * 0.16) ** (1 / 3))  # geometric mean
    lo, hi = sharp["ratio_ci95"]
    assert lo < sharp["ratio"] < hi < 0.5  # the 10x-per-seed spread cancels in the pairs
    assert sharp["per_seed_without_sam"] == [10.0, 100.0, 1000.0]


def test_quick_study_runs(tmp_path, capsys):
    workdir = ["--workdir", str(tmp_path)]
    assert main(["run", SPEC, "--quick", "--no-progress", *workdir]) == 0
    assert "4/4 configs finished; trials COMPLETE 4" in capsys.readouterr().out
    assert main(["fit", SPEC, "--quick", *workdir]) == 0
    with open(tmp_path / "fit.json") as f:
        result = json.load(f)
    assert set(result) >= {"ViT", "ResNet", "ViT_minus_ResNet_gain"} and result["failed"] == 0
    assert result["ViT"]["seeds"] == 1
    for arch in ("ViT", "ResNet"):  # each trained model's sharpness, with and without SAM
        sharp = result["sharpness"][arch]
        assert sharp["lambda_without_sam"] > 0 and sharp["lambda_sam"] > 0 and sharp["ratio"] > 0
    assert main(["plot", SPEC, "--quick", *workdir]) == 0
    assert (tmp_path / "plots" / "sam_gain.png").exists()
