"""Search on the study engine: exact costs, the budget, determinism, resume, bad spaces."""

import dataclasses
import functools
import itertools

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits

from archjax import models, nas, quant, studies
from archjax.nas.search import _from_genes

from .supernets import noisy_variables

SPACE = nas.ResNetSpace(
    depths=((1, 2), (1, 2)), widths=((2, 4), (4, 8)), kernels=(1, 3), resolutions=(8,)
)
NET = nas.SuperResNet(SPACE)


@functools.cache
def _data():
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 8, 8, 1).astype(np.float32)
    return x[:64], y[:64].astype(np.int32), x[64:128], y[64:128].astype(np.int32)


@functools.cache
def _variables():
    """Supernet variables with non-trivial BatchNorm statistics and affine parameters."""
    return noisy_variables(NET, (1, 8, 8, 1))


@functools.cache
def _evaluator():
    x_cal, _, x, y = _data()
    return nas.make_evaluator(NET, _variables(), images=x, labels=y, calibration=x_cal,
                              batch_size=32)  # fmt: skip


CALLS = []  # every child a trial evaluated, in order


def child_trial(config, trial):
    """The study's trial: one child evaluated with the shared weights."""
    arch = nas.config_arch(SPACE, config)
    CALLS.append(arch)
    return _evaluator()(arch)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One trial store for the file (opening one costs a second); a study per search."""
    workdir = tmp_path_factory.mktemp("search")
    return studies.open_storage(studies.sqlite_url(str(workdir))), workdir


def _study(name):
    return studies.Study(name=name, configs=(), trial=child_trial, objective="accuracy",
                         direction="maximize", fixed={"supernet": "test"})  # fmt: skip


def _search(store, name, strategy, *, seed=0, budget=None, space=None):
    storage, workdir = store
    return nas.run_search(_study(name), storage, str(workdir / name), supernet=SPACE,
                          space=space, strategy=strategy, budget=budget, channels=1,
                          seed=seed)  # fmt: skip


def test_cost_is_exact():
    rng = np.random.default_rng(0)
    for arch in (SPACE.largest(), SPACE.smallest(), *(SPACE.sample(rng) for _ in range(2))):
        model = SPACE.child(arch)
        cost = SPACE.cost(arch, channels=1)
        assert cost["params"] == models.count_params(model, (1, 8, 8, 1))
        assert cost["macs"] == quant.report(model, [], (1, 8, 8, 1)).macs


def test_evaluator_scores_the_extracted_recalibrated_child():
    x_cal, _, x, y = _data()
    arch = nas.Arch(depths=(2, 1), widths=(2, 8), kernels=(3, 1), resolution=8)
    got = _evaluator()(arch)
    model, child = nas.recalibrate(SPACE, _variables(), arch, x_cal.reshape(2, 32, 8, 8, 1))
    logits = model.apply(child, x)
    assert got["accuracy"] == pytest.approx(float(np.mean(np.argmax(logits, -1) == y)))
    loss = -jax.nn.log_softmax(logits)[np.arange(len(y)), y].mean()
    assert got["loss"] == pytest.approx(float(loss), rel=1e-4)
    assert (got["macs"], got["params"]) == tuple(SPACE.cost(arch, channels=1).values())[::-1]


def test_search_respects_its_budget_is_deterministic_and_resumes(store):
    costs = sorted(SPACE.cost(a, channels=1)["macs"] for a in _all_children())
    budget = {"macs": costs[len(costs) // 2]}  # half the space is over it
    evolution = nas.Evolution(population=3, generations=3, tournament=2)
    CALLS.clear()
    rows = _search(store, "a", evolution, budget=budget)
    assert 6 < len(rows) <= 9 and len(CALLS) == len(rows)
    # No child over the budget was ever evaluated, and no child twice.
    assert all(SPACE.cost(a, channels=1)["macs"] <= budget["macs"] for a in CALLS)
    assert len(set(CALLS)) == len(CALLS)
    assert [r["generation"] for r in rows] == sorted(r["generation"] for r in rows)
    # The same seed in a new study: the same children and results; another seed differs.
    assert _summary(_search(store, "b", evolution, budget=budget)) == _summary(rows)
    # (Another seed differs; its study is "a", so it evaluates only children not yet there.)
    assert _summary(_search(store, "a", evolution, budget=budget, seed=1)) != _summary(rows)
    # Run again on the first study: nothing is evaluated again, the same rows come back.
    CALLS.clear()
    assert _summary(_search(store, "a", evolution, budget=budget)) == _summary(rows)
    assert CALLS == []
    front = nas.pareto(rows)
    assert front and [r["macs"] for r in front] == sorted(r["macs"] for r in front)
    assert all(
        not (o["macs"] <= f["macs"] and o["accuracy"] > f["accuracy"]) for f in front for o in rows
    )


def test_random_search_exhausts_a_small_space_under_a_params_budget(store):
    budget = {"params": SPACE.cost(SPACE.smallest(), channels=1)["params"] + 1}
    space = dataclasses.replace(SPACE, depths=((1,), (1, 2)))
    cost = lambda a: SPACE.cost(a, channels=1)["params"]
    under = [a for a in _all_children(space) if cost(a) <= budget["params"]]
    rows = _search(store, "random", nas.RandomSearch(num_children=5), budget=budget, space=space)
    assert len(rows) == len(under) >= 1  # fewer children fit than asked for: all of them
    assert all(r["params"] <= budget["params"] for r in rows)


def test_bad_search_spaces_and_budgets_name_the_problem(store):
    run = functools.partial(_search, store, "bad", nas.RandomSearch(num_children=1))
    too_wide = dataclasses.replace(SPACE, widths=((2, 4), (4, 32)))
    with pytest.raises(
        ValueError, match=r"^search space widths\[1\] = 32 \(above the supernet's 8\)"
    ):
        run(space=too_wide)
    with pytest.raises(ValueError, match=r"^ResNetSpace.depths\[0\] is an empty choice"):
        run(space=dataclasses.replace(SPACE, depths=((), (1, 2))))
    with pytest.raises(ValueError, match="budget key 'flops' is not one of"):
        run(budget={"flops": 1e6})
    with pytest.raises(ValueError, match="No child of the search space fits the budget"):
        run(budget={"params": 10})
    with pytest.raises(ValueError, match="Evolution.mutation must be in"):
        nas.Evolution(mutation=1.5)


def _all_children(space=SPACE):
    genes = space.choices()
    for values in itertools.product(*genes.values()):
        yield _from_genes(space.largest(), dict(zip(genes, values, strict=True)))


def _summary(rows):
    return [(r["key"], r["accuracy"], r["loss"]) for r in rows]
