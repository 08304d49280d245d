"""The one path matcher: the same regex selects the same leaves in every rule table."""

import flax.struct
import jax
import jax.numpy as jnp
import optax
import pytest

from archjax import analysis, optim, parallel, quant
from archjax.tree_paths import check_pattern, first_match, match_path


@flax.struct.dataclass
class _Node:
    inner: dict


def _paths(tree):
    return [parallel.path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def test_paths_are_keystr_for_dicts_lists_dataclasses_and_optax_states():
    params = {"stage1": {"conv": {"kernel": jnp.ones(2)}}, "head": {"bias": jnp.ones(2)}}
    tree = {"params": params, "opt": optax.adam(1e-3).init(params), "node": _Node([1, 2])}
    assert _paths(tree) == [
        "node/inner/0",
        "node/inner/1",
        "opt/0/count",
        "opt/0/mu/head/bias",
        "opt/0/mu/stage1/conv/kernel",
        "opt/0/nu/head/bias",
        "opt/0/nu/stage1/conv/kernel",
        "params/head/bias",
        "params/stage1/conv/kernel",
    ]
    assert analysis.param_paths(params) == ["head/bias", "stage1/conv/kernel"]


def test_match_is_a_search_and_the_first_rule_wins():
    assert match_path(r"conv", "stage1/conv/kernel")
    assert not match_path(r"^conv", "stage1/conv/kernel")
    rules = [("^head", "a"), ("kernel$", "b"), ("", "c")]
    assert first_match(rules, "stage1/conv/kernel", pattern=lambda r: r[0]) == ("kernel$", "b")
    assert first_match(rules, "head/kernel", pattern=lambda r: r[0]) == ("^head", "a")
    assert first_match(rules[:1], "x", pattern=lambda r: r[0]) is None


@pytest.mark.parametrize("pattern", [r"^head/", r"conv/kernel$", r"stage\d", "bias"])
def test_quant_sharding_and_optimizer_rules_select_the_same_leaves(pattern):
    params = {
        "stem": {"kernel": jnp.ones((3, 3, 1, 4))},
        "stage1": {"conv": {"kernel": jnp.ones((3, 3, 4, 4)), "bias": jnp.ones(4)}},
        "head": {"kernel": jnp.ones((4, 2)), "bias": jnp.ones(2)},
    }
    paths = analysis.param_paths(params)
    by_mask = jax.tree.leaves(optim.path_mask(pattern, match=True)(params))
    by_quant = [quant.match_rule([quant.QuantRule(pattern=pattern)], p) is not None for p in paths]
    sharding = parallel.ShardingRules(param_rules=((pattern, ("x",)), (pattern, ("x",) * 2)))
    by_sharding = [
        parallel.logical_axes(p, leaf.ndim, sharding)[0] == "x"
        for p, leaf in zip(paths, jax.tree.leaves(params), strict=True)
    ]
    assert by_mask == by_quant
    # Sharding rules also need one logical name per dimension (no 4-D rule here).
    leaves = jax.tree.leaves(params)
    assert by_sharding == [m and leaf.ndim <= 2 for m, leaf in zip(by_mask, leaves, strict=True)]
    assert any(by_mask)


def test_every_table_names_a_bad_regex_the_same_way():
    for make, field in [
        (lambda: quant.QuantRule(pattern="("), "QuantRule.pattern"),
        (lambda: parallel.ShardingRules(param_rules=(("(", ("x",)),)), "param_rules"),
        (lambda: optim.path_mask("(", match=True), "path_mask"),
    ]:
        with pytest.raises(ValueError, match=rf"^{field}: bad regex '\(': "):
            make()
    with pytest.raises(ValueError, match="a path regex must be a string, got 3"):
        check_pattern(3, field="x")
