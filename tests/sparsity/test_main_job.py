"""The main job with ``--config.sparsity.*``: schedules, checkpoints, resume, IMP rounds."""

import os
import shutil

import chex
import jax
import numpy as np
import pytest

import archjax.sparsity as sp
from archjax import models, quant
from archjax.checkpoint import Checkpointer
from archjax.train import abstract_train_state
from experiments import config_utils, pruning
from experiments import train as main_job
from tests.conftest import TINY_MODEL_KWARGS, TINY_RUN


def _config(**sparsity):
    config = config_utils.load_config()
    config.update(TINY_RUN)
    config.model_kwargs.update(TINY_MODEL_KWARGS)
    config.sparsity.update(sparsity)
    return config


def _restore(workdir, config, step=None, sub="checkpoints"):
    model = models.create(config.model, num_classes=10, **config.model_kwargs.to_dict())
    tx = main_job.create_optimizer(config)
    target = abstract_train_state(model, tx, input_shape=(1, 8, 8, 1))
    with Checkpointer(os.path.join(workdir, sub)) as ckpt:
        return ckpt.restore(target, step=step)[0]


def _check_zeros(state):
    """Pruned weights are exactly zero; returns the mask's sparsity over prunable leaves."""
    mask = sp.get_mask(state.opt_state)
    for p, m in zip(jax.tree.leaves(state.params), jax.tree.leaves(mask), strict=True):
        assert (np.asarray(p)[~np.asarray(m)] == 0).all()
    return sp.sparsity_of(mask, prunable=sp.prunable(state.params))


def _count(target, state):
    """The exact sparsity a criterion gives at ``target`` (round(target * n) of n)."""
    flags = sp.prunable(state.params)
    leaves = zip(jax.tree.leaves(state.params), jax.tree.leaves(flags), strict=True)
    n = sum(p.size for p, f in leaves if f)
    return round(target * n) / n


def test_gradual_schedule_checkpoints_the_mask_and_resumes_bitwise(tmp_path):
    config = _config(method="magnitude", target=0.8, schedule="gradual", begin_step=2,
                     end_step=8, frequency=2)  # fmt: skip
    workdir = str(tmp_path / "run")
    main_job.train_and_evaluate(config, workdir)
    # Masks are recomputed before the updates of steps 2, 4, 6, 8 (cubic: 0, .56, .77, .8);
    # the checkpoint of step t holds the mask of the last pruning step before t.
    for step, pruned_at in ((4, 2), (8, 6), (12, 8)):
        state = _restore(workdir, config, step)
        want = pruning.target_at(config, pruned_at)
        assert _check_zeros(state) == pytest.approx(_count(want, state), abs=1e-12), step
    final = _restore(workdir, config)
    # Resume from step 8 (before the pruning step 8 ran): the same final state, bitwise.
    resumed = str(tmp_path / "resumed")
    shutil.copytree(workdir, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", "12"))
    again = main_job.train_and_evaluate(config, resumed)
    assert again["resumed_from"] == 8
    chex.assert_trees_all_equal(_restore(resumed, config), final)


def test_imp_rounds_rewind_bitwise_and_keep_old_zeros(tmp_path):
    dense = _config(rewind_step=2)  # method "none": a dense run that keeps step 2
    main_job.train_and_evaluate(dense, str(tmp_path / "r0"))
    early = _restore(str(tmp_path / "r0"), dense, 2, sub="rewind")
    final0 = _restore(str(tmp_path / "r0"), dense)

    r1 = _config(method="magnitude", target=0.5, rewind_step=2, imp_from=str(tmp_path / "r0"))
    summary = main_job.train_and_evaluate(r1, str(tmp_path / "r1"))
    assert summary["steps"] == 12
    start = _restore(str(tmp_path / "r1"), r1, 2, sub="rewind")  # round 1 began at step 2
    mask = sp.get_mask(start.opt_state)
    flags = sp.prunable(final0.params)
    chex.assert_trees_all_equal(mask, sp.global_magnitude(final0.params, 0.5, prunable=flags))
    for a, b, m in zip(*map(jax.tree.leaves, (start.params, early.params, mask)), strict=True):
        a, b, m = np.asarray(a), np.asarray(b), np.asarray(m)
        np.testing.assert_array_equal(a[m].view(np.uint32), b[m].view(np.uint32))  # bitwise
        assert (a[~m] == 0).all()
    chex.assert_trees_all_equal(start.batch_stats, early.batch_stats)
    final1 = _restore(str(tmp_path / "r1"), r1)
    assert _check_zeros(final1) == pytest.approx(_count(0.5, final1), abs=1e-12)
    # The run's summary reports the final mask's sparsity and the forward MACs it keeps.
    assert summary["sparsity"] == _check_zeros(final1)
    model = models.create(r1.model, num_classes=10, **r1.model_kwargs.to_dict())
    report = quant.report(model, [], (1, 8, 8, 1))
    want = sp.sparse_bops(report, sp.get_mask(final1.opt_state)) / report.bops
    assert summary["macs_kept"] == pytest.approx(want, rel=1e-12)
    assert 0 < summary["macs_kept"] < 1

    # Round 2 as the lottery control: the next mask, from a fresh initialization.
    r2 = _config(method="magnitude", target=0.75, rewind="reinit", imp_from=str(tmp_path / "r1"))
    r2.seed = 1
    main_job.train_and_evaluate(r2, str(tmp_path / "r2"))
    final2 = _restore(str(tmp_path / "r2"), r2)
    assert _check_zeros(final2) == pytest.approx(_count(0.75, final2), abs=1e-12)
    old, new = sp.get_mask(final1.opt_state), sp.get_mask(final2.opt_state)
    assert jax.tree.all(jax.tree.map(lambda o, n: bool((n <= o).all()), old, new))


@pytest.mark.parametrize(
    ("sparsity", "message"),
    [
        ({"method": "magnitud"}, "Unknown config.sparsity.method 'magnitud'. Choices: none,"),
        ({"method": "magnitude", "target": 1.0}, r"target=1.0 is outside \[0, 1\)"),
        ({"method": "magnitude"}, "prunes nothing"),
        ({"method": "n_m", "n": 5, "m": 4}, "0 < n <= m, got n=5, m=4"),
        ({"method": "random", "target": 0.5, "schedule": "gradual"}, "needs method magnitude"),
        ({"method": "magnitude", "target": 0.5, "begin_step": 99}, r"begin_step=99 .* \[0, "),
        ({"method": "snip", "target": 0.5, "imp_from": "/x"}, "IMP round"),
        ({"method": "magnitude", "target": 0.5, "distribution": "ERK"}, "Choices: uniform, erk"),
    ],
)
def test_bad_sparsity_config_is_one_line(sparsity, message):
    with pytest.raises(ValueError, match=message) as err:
        pruning.check_config(_config(**sparsity))
    assert "\n" not in str(err.value)
