"""The RegNet design-space study: its quick mode end to end, and the width fit it reports."""

import json

import pytest

from archjax import models
from archjax.studies.__main__ import main
from experiments.studies import regnet_space

SPEC = "experiments/studies/regnet_space.py"


@pytest.mark.parametrize("seed", [0, 3])
def test_fit_recovers_a_generated_regnet(seed):
    p = models.sample_regnet(seed, flops_budget=400e6, bottleneck_ratios=(1.0,), group_widths=(1,))
    widths = regnet_space.block_widths(models.generate_regnet(p))
    fitted = regnet_space.fit_quantized_linear(widths)
    assert fitted["e_fit"] < 0.05  # the grid holds the rule's parameters up to its spacing
    assert fitted["e_fit"] < regnet_space.fit_quantized_linear(widths[::-1])["e_fit"]


def test_samples_share_one_flop_range():
    configs = regnet_space.sample_configs(3, quick=False)
    flops = [models.regnet_flops(regnet_space.stage_config(c), image_size=16, num_classes=10)
             for c in configs]  # fmt: skip
    assert [regnet_space.space(c) for c in configs] == ["AnyNetX", "RegNetX"] * 3
    assert min(flops) >= 0.5 * 4e5 and max(flops) <= 4e5


def test_quick_study_runs(tmp_path, capsys):
    workdir = ["--workdir", str(tmp_path)]
    assert main(["run", SPEC, "--quick", "--no-progress", *workdir]) == 0
    assert "2/2 configs finished; trials COMPLETE 2" in capsys.readouterr().out
    assert main(["fit", SPEC, "--quick", *workdir]) == 0
    with open(tmp_path / "fit.json") as f:
        result = json.load(f)
    assert result["AnyNetX"]["n"] == result["RegNetX"]["n"] == 1 and result["failed"] == 0
    assert 0 <= result["ks_statistic"] <= 1 and len(result["best_anynet_fits"]) == 1
    assert main(["plot", SPEC, "--quick", *workdir]) == 0
    assert (tmp_path / "plots" / "error_edf.png").exists()
    assert (tmp_path / "plots" / "best_widths.png").exists()


def test_anynet_point_needs_all_stage_knobs():
    kw = {"stage_depths": (1, 2), "stage_widths": (16, 32), "stage_group_widths": (4, 8)}
    config = models.create("regnetx_002", **kw).stage_config()
    assert config.depths == (1, 2) and config.widths == (16, 32)
    with pytest.raises(ValueError, match="must be given together"):
        models.create("regnetx_002", **{**kw, "stage_widths": (16,)}).stage_config()
