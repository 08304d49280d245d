"""RegNet: the width generator against the published configs, the sampler's
FLOP budget, and the model's knobs."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

import archjax.models as models
from archjax.models.regnet import PRESETS


@pytest.mark.parametrize(
    "name,depths,widths,group_widths",
    [
        # Radosavovic et al. 2020 / pycls RegNetX-1.6GF and RegNetY-1.6GF (= timm's cfgs).
        ("regnetx_016", (2, 4, 10, 2), (72, 168, 408, 912), (24, 24, 24, 24)),
        ("regnety_016", (2, 6, 17, 2), (48, 120, 336, 888), (24, 24, 24, 24)),
        ("regnetx_002", (1, 1, 4, 7), (24, 56, 152, 368), (8, 8, 8, 8)),
        ("regnety_040", (2, 6, 12, 2), (128, 192, 512, 1088), (64, 64, 64, 64)),
    ],
)
def test_generator_reproduces_published_configs(name, depths, widths, group_widths):
    cfg = models.generate_regnet(PRESETS[name])
    assert (cfg.depths, cfg.widths, cfg.group_widths) == (depths, widths, group_widths)
    assert cfg.num_stages == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.depths = (1,)  # frozen: a config is a value


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_flops_match_their_names(name):
    # "regnetx_016" = 1.6e9 multiply-adds at 224 px: the three digits are 1e8 MACs.
    macs = models.regnet_flops(models.generate_regnet(PRESETS[name]))
    assert abs(macs / (int(name[-3:]) * 1e8) - 1) < 0.05, macs


def test_group_width_compatibility_adjustment():
    # Bottleneck width 0.5 * 72 = 36 is not a multiple of 24: rounded to 48 -> width 96.
    p = dataclasses.replace(PRESETS["regnetx_016"], bottleneck_ratio=0.5)
    cfg = models.generate_regnet(p)
    for w, g in zip(cfg.widths, cfg.group_widths, strict=True):
        assert int(w * 0.5) % g == 0
    assert cfg.widths[0] == 96
    # A group width larger than the bottleneck width is capped at it.
    cfg = models.generate_regnet(dataclasses.replace(PRESETS["regnetx_002"], group_width=64))
    assert cfg.group_widths[0] == cfg.widths[0] == 24


def test_generator_rejects_bad_parameters():
    with pytest.raises(ValueError, match="multiple of 8"):
        models.generate_regnet(dataclasses.replace(PRESETS["regnetx_002"], w0=20))
    with pytest.raises(ValueError, match="wm > 1"):
        models.generate_regnet(dataclasses.replace(PRESETS["regnetx_002"], wm=1.0))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("budget", [200e6, 800e6])
def test_sampler_respects_flops_budget(seed, budget):
    p = models.sample_regnet(seed, flops_budget=budget)
    cfg = models.generate_regnet(p)
    assert 0.9 * budget <= models.regnet_flops(cfg) <= budget
    assert cfg.num_stages == 4 and p.depth < 64 and 1.5 <= p.wm <= 3 and p.w0 % 8 == 0
    assert models.sample_regnet(seed, flops_budget=budget) == p  # deterministic


def test_sampler_takes_jax_keys_and_narrowed_ranges():
    p = models.sample_regnet(
        jax.random.key(7),
        flops_budget=400e6,
        lower_fraction=0.95,
        max_depth=40,
        wm_range=(2.0, 3.0),
        bottleneck_ratios=(1.0,),
        se_ratio=0.25,
    )
    assert p.depth <= 40 and 2.0 <= p.wm <= 3.0 and p.bottleneck_ratio == 1.0
    assert p == models.sample_regnet(
        jax.random.PRNGKey(7),  # raw uint32 keys give the same draw as typed ones
        flops_budget=400e6,
        lower_fraction=0.95,
        max_depth=40,
        wm_range=(2.0, 3.0),
        bottleneck_ratios=(1.0,),
        se_ratio=0.25,
    )
    assert 380e6 <= models.regnet_flops(models.generate_regnet(p)) <= 400e6
    with pytest.raises(ValueError, match="No RegNet"):
        models.sample_regnet(0, flops_budget=1e3, max_tries=50)


def test_sampled_network_builds_and_matches_analytic_flops():
    p = models.sample_regnet(3, flops_budget=200e6, max_depth=16)
    model = models.RegNet(**dataclasses.asdict(p), num_classes=10)
    assert model.stage_config() == models.generate_regnet(p)
    # XLA skips padded positions and adds elementwise work: within 10% at 64 px.
    analytic = models.regnet_flops(model.stage_config(), image_size=64, num_classes=10)
    measured = models.count_flops(model, (1, 64, 64, 3)) / 2
    assert abs(measured / analytic - 1) < 0.1, (measured, analytic)


def _num_params(model):
    return models.count_params(model, (1, 32, 32, 3))


def test_knobs_depth_width_classes():
    base = models.create("regnetx_002", num_classes=10)
    deeper = models.create("regnetx_002", num_classes=10, depth=20)
    assert sum(deeper.stage_config().depths) == 20
    assert _num_params(deeper) > _num_params(base)
    half = models.create("regnetx_002", num_classes=10, width_multiplier=0.5)
    cfg = half.stage_config()
    assert cfg.depths == base.stage_config().depths
    for w, g in zip(cfg.widths, cfg.group_widths, strict=True):
        assert w % g == 0
    assert 0.15 < _num_params(half) / _num_params(base) < 0.4  # ~ width squared
    logits = jax.eval_shape(
        lambda x: models.create("regnety_002", num_classes=7).init_with_output(
            jax.random.key(0), x
        )[0],
        jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32),
    )
    assert logits.shape == (2, 7)


def test_y_has_squeeze_excitation_and_x_has_none():
    def blocks(name):
        model = models.create(name, **models.tiny_kwargs(name))
        variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
        return variables["params"]["stage1_block1"]

    assert "se" in blocks("regnety_002") and "se" not in blocks("regnetx_002")
    # 4 stages of one block each; the tiny stage 1 convolution is grouped (8 / 4 = 2 groups).
    conv2 = blocks("regnetx_002")["conv2"]["kernel"]
    assert conv2.shape == (3, 3, 4, 8)


def test_bfloat16_compute_keeps_fp32_params_and_logits():
    name = "regnety_002"
    model = models.create(name, dtype=jnp.bfloat16, **models.tiny_kwargs(name))
    # Shapes and dtypes only (jax.eval_shape): nothing is compiled.
    logits, variables = jax.eval_shape(
        lambda x: model.init_with_output(jax.random.key(0), x),
        jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32),
    )
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
    assert logits.dtype == jnp.float32


def test_rejects_non_image_input():
    name = "regnetx_002"
    with pytest.raises(ValueError, match="NHWC"):
        models.create(name, **models.tiny_kwargs(name)).init(jax.random.key(0), jnp.zeros((2, 8)))
