"""Search over a supernet's children on the study engine: random and evolutionary.

BigNAS (Yu et al., 2020) searches its trained supernet for the best child under a
FLOPs budget, evaluating each candidate with the shared weights after re-estimating
its BatchNorm statistics. Here every candidate is a trial of an
:class:`archjax.studies.Study` (its config is the child, e.g. ``{"depths": [1, 2],
"widths": [8, 16], "kernels": [3, 5], "resolution": 8}``), so a search is
resumable and its results are plain rows of the trial store. A generation is queued
with :func:`archjax.studies.init` (which enqueues only configs not yet in the store)
and run with :func:`archjax.studies.work`; its proposals depend only on the seed,
the generation and the stored results of earlier generations, so a search that is
run again (after a kill, or finished) proposes the same children and re-evaluates
none.

Children over the cost budget are never queued: the cost (``params``, shape
``macs``) is counted exactly from the arch by ``space.cost``. Strategies:
:class:`RandomSearch` (uniform under the budget) and :class:`Evolution`
(tournament selection, uniform crossover and per-gene mutation; the parents are the
last ``population`` children evaluated, so the oldest die: regularized evolution,
Real et al., 2019). :func:`pareto` reads the frontier of the objective vs a cost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from archjax.studies import fits, runner
from archjax.studies import store as S
from archjax.studies.definition import Study, config_key

COSTS = ("macs", "params")  # what a budget may bound (``space.cost``)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RandomSearch:
    """Children drawn uniformly from the search space, rejected while over budget."""

    # Distinct children to evaluate.
    num_children: int = 32

    def __post_init__(self):
        if self.num_children < 1:
            raise ValueError(f"RandomSearch.num_children must be >= 1, got {self.num_children}.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Evolution:
    """Regularized evolution, one generation of ``population`` children at a time."""

    # Children per generation; the parents are the last `population` evaluated.
    population: int = 16
    # Generations, the first one random.
    generations: int = 4
    # A parent is the best of this many members drawn from the population.
    tournament: int = 4
    # Probability of each gene taking a new random value.
    mutation: float = 0.25
    # Probability that a child mixes two parents gene by gene.
    crossover: float = 0.5

    def __post_init__(self):
        for name in ("population", "generations", "tournament"):
            if getattr(self, name) < 1:
                raise ValueError(f"Evolution.{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("mutation", "crossover"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"Evolution.{name} must be in [0, 1], got {getattr(self, name)}.")


def check_subspace(space: Any, supernet: Any) -> None:
    """Raises a ValueError naming the first gene of ``space`` the supernet cannot run.

    Example:
      >>> check_subspace(dataclasses.replace(sup, widths=((8,), (32,))), sup)
      ValueError: search space widths[1] = 32 (above the supernet's 16) is not one of ...
    """
    if type(space) is not type(supernet):
        raise ValueError(
            f"The search space is a {type(space).__name__}, the supernet's a "
            f"{type(supernet).__name__}."
        )
    mine, theirs = space.choices(), supernet.choices()
    if mine.keys() != theirs.keys():
        raise ValueError(
            f"The search space has genes {sorted(mine)}, the supernet {sorted(theirs)}."
        )
    for gene, choices in mine.items():
        for value in choices:
            if value not in theirs[gene]:
                top = max(theirs[gene])
                above = f" (above the supernet's {top})" if value > top else ""
                raise ValueError(
                    f"search space {gene} = {value}{above} is not one of the supernet's "
                    f"choices {theirs[gene]}."
                )
    if getattr(space, "num_classes", None) != getattr(supernet, "num_classes", None):
        raise ValueError(f"search space num_classes = {space.num_classes}, the supernet's "
                         f"{supernet.num_classes}.")  # fmt: skip


def arch_config(arch: Any) -> dict[str, Any]:
    """The child as a trial config (JSON: tuples become lists)."""
    return {
        f.name: list(v) if isinstance(v := getattr(arch, f.name), tuple) else v
        for f in dataclasses.fields(arch)
    }


def config_arch(space: Any, config: Mapping[str, Any]) -> Any:
    """The child of ``space`` named by a trial config (other keys are ignored)."""
    arch = _from_config(space.largest(), config)
    space.check(arch)
    return arch


def _from_config(template: Any, config: Mapping[str, Any]) -> Any:
    return type(template)(**{
        f.name: tuple(v) if isinstance(v := config[f.name], list | tuple) else v
        for f in dataclasses.fields(template)
    })  # fmt: skip


def _genes(arch: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(arch):
        value = getattr(arch, f.name)
        if isinstance(value, tuple):
            out.update({f"{f.name}[{i}]": v for i, v in enumerate(value)})
        else:
            out[f.name] = value
    return out


def _from_genes(template: Any, genes: Mapping[str, Any]) -> Any:
    values = {}
    for f in dataclasses.fields(template):
        old = getattr(template, f.name)
        values[f.name] = (
            tuple(genes[f"{f.name}[{i}]"] for i in range(len(old)))
            if isinstance(old, tuple)
            else genes[f.name]
        )
    return type(template)(**values)


def _pick(rng: np.random.Generator, choices) -> Any:
    value = choices[int(rng.integers(len(choices)))]
    return value.item() if isinstance(value, np.generic) else value


def _fits(cost: Mapping[str, int], budget: Mapping[str, float]) -> bool:
    return all(cost[k] <= v for k, v in budget.items())


def run_search(
    study: Study,
    storage: Any,
    workdir: str,
    *,
    supernet: Any,
    strategy: RandomSearch | Evolution,
    space: Any = None,
    budget: Mapping[str, float] | None = None,
    channels: int = 3,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Searches the children of ``space`` under ``budget``; each child is a trial.

    Args:
      study: the trial store's study: its ``trial(config, trial)`` evaluates the
        child ``config_arch(space, config)`` (e.g. with :func:`make_evaluator`) and
        returns its ``objective`` (selection follows ``direction``); ``configs`` is
        ignored (the search proposes them).
      storage: an opened store (:func:`archjax.studies.open_storage`).
      workdir: the study's directory.
      supernet: the space the supernet was built for.
      strategy: :class:`RandomSearch` or :class:`Evolution`.
      space: the space searched (default ``supernet``): every choice must be one of
        the supernet's.
      budget: upper bounds on ``space.cost`` (keys in :data:`COSTS`), e.g.
        ``{"macs": 2e6}``; a child over any bound is never queued.
      channels: input channels (the cost of the first layer).
      seed: the proposals' seed; with the same stored results, the same children.

    Returns:
      One row per child evaluated, in proposal order: the store's row (config,
      metrics) with the child's ``macs``, ``params`` and ``generation``.

    Raises:
      ValueError: a bad space, budget or strategy (the message names it).
      archjax.studies.StudyError: a child's trial failed (its error's last line).

    Example:
      >>> rows = run_search(study, storage, "runs/search", supernet=space,
      ...                   strategy=Evolution(population=8), budget={"macs": 3e6})
      >>> front = pareto(rows)
    """
    space = supernet if space is None else space
    check_subspace(space, supernet)
    budget = dict(budget or {})
    for k, v in budget.items():
        if k not in COSTS:
            raise ValueError(f"budget key {k!r} is not one of {COSTS}.")
        if not v > 0:
            raise ValueError(f"budget {k} = {v} must be positive.")
    smallest = space.cost(space.smallest(), channels=channels)
    if not _fits(smallest, budget):
        raise ValueError(
            f"No child of the search space fits the budget {budget}: the smallest costs {smallest}."
        )
    choices, template = space.choices(), space.largest()
    seen: set[Any] = set()

    def cost(arch):
        return space.cost(arch, channels=channels)

    def draw(rng, make, n):
        """Up to ``n`` new children under budget from ``make(rng)``, in draw order."""
        out = []
        for _ in range(100 * n + 100):
            if len(out) == n:
                break
            arch = make(rng)
            if arch not in seen and _fits(cost(arch), budget):
                seen.add(arch)
                out.append(arch)
        return out

    def uniform(rng):
        return _from_genes(template, {g: _pick(rng, c) for g, c in choices.items()})

    rows: list[dict[str, Any]] = []
    if isinstance(strategy, RandomSearch):
        generations = [strategy.num_children]
    else:
        generations = [strategy.population] * strategy.generations
    for g, n in enumerate(generations):
        rng = np.random.default_rng([seed, g])
        if g == 0:
            archs = draw(rng, uniform, n)
        else:
            population = rows[-strategy.population :]
            archs = draw(rng, _breeder(strategy, study, population, choices, template), n)
        if not archs:
            break  # the space under the budget is exhausted
        rows.extend(_evaluate(study, storage, workdir, archs, g, cost))
    return rows


def _breeder(strategy: Evolution, study: Study, population, choices, template) -> Callable:
    """``make(rng)``: a child of tournament-selected parents, crossed over and mutated."""
    sign = 1.0 if study.direction == "maximize" else -1.0

    def parent(rng):
        drawn = rng.choice(len(population), min(strategy.tournament, len(population)), False)
        best = max(drawn, key=lambda i: (sign * population[i][study.objective], -i))
        return _genes(_from_config(template, population[best]))

    def make(rng):
        genes = parent(rng)
        if rng.random() < strategy.crossover:
            other = parent(rng)
            genes = {g: (v if rng.random() < 0.5 else other[g]) for g, v in genes.items()}
        for g in genes:
            if rng.random() < strategy.mutation:
                genes[g] = _pick(rng, choices[g])
        return _from_genes(template, genes)

    return make


def _evaluate(study: Study, storage, workdir: str, archs, generation: int, cost) -> list[dict]:
    """Queues and runs the children (stored ones are not run again); their rows."""
    configs = [arch_config(a) for a in archs]
    part = dataclasses.replace(study, configs=configs)
    runner.init(part, storage)
    runner.work(part, storage, workdir, show_progress=False)
    stored: dict[str, dict] = {}
    for row in S.rows(runner.load(study, storage)):
        if row["state"] == "COMPLETE" or row["key"] not in stored:
            stored[row["key"]] = row
    out = []
    for arch, config in zip(archs, configs, strict=True):
        row = stored.get(config_key(config))
        if row is None or row["state"] != "COMPLETE":
            error = (row or {}).get("error") or "not run"
            raise S.StudyError(
                f"Search study {study.name!r}: child {config} did not complete: "
                f"{error.strip().splitlines()[-1]}"
            )
        out.append({**row, **cost(arch), "generation": generation})
    return out


def pareto(
    rows: list[dict[str, Any]], *, cost: str = "macs", metric: str = "accuracy"
) -> list[dict[str, Any]]:
    """The rows no other row beats on both lower ``cost`` and higher ``metric``, by cost.

    Example:
      >>> [(r["macs"], r["accuracy"]) for r in pareto(rows)]
    """
    if not rows:
        return []
    points = np.array([[r[cost], r[metric]] for r in rows], float)
    front = fits.pareto_front(points, ["minimize", "maximize"])
    return sorted((r for r, f in zip(rows, front, strict=True) if f), key=lambda r: r[cost])


def make_evaluator(
    net: nn.Module,
    variables: Any,
    *,
    images: Any,
    labels: Any,
    calibration: Any,
    batch_size: int = 64,
) -> Callable[[Any], dict[str, float]]:
    """``evaluate(arch) -> {"accuracy", "loss", "macs", "params"}`` with shared weights.

    Each child first gets its own BatchNorm statistics (BigNAS): the supernet runs the
    child in train mode over ``calibration`` (batches of ``batch_size``) from the
    supernet's statistics, with the model's momentum, exactly as
    :func:`archjax.nas.recalibrate` does to the extracted child. Then it is scored on
    ``images``/``labels``. The child enters the supernet as arrays, so ONE compiled
    program per resolution serves every child (recalibrating each extracted child
    would compile each); images are resized (bilinear) to the child's resolution.

    Args:
      net: the supernet (``net.space``).
      variables: its trained variables.
      images: ``[N, H, W, C]`` evaluation images; ``labels``: ``[N]`` integers.
      calibration: ``[M, H, W, C]`` images for the statistics (whole batches used).
      batch_size: batch size of both passes.

    Example:
      >>> evaluate = make_evaluator(net, v, images=x_val, labels=y_val, calibration=x_tr)
      >>> evaluate(net.space.smallest())["accuracy"]
    """
    space = net.space
    images, labels = np.asarray(images, np.float32), np.asarray(labels, np.int32)
    calibration = np.asarray(calibration, np.float32)
    n_calib = len(calibration) // batch_size
    if n_calib < 1:
        raise ValueError(f"calibration has {len(calibration)} images, fewer than a batch "
                         f"({batch_size}).")  # fmt: skip
    pad = -len(images) % batch_size
    weights = np.concatenate([np.ones(len(images)), np.zeros(pad)]).astype(np.float32)
    padded = np.concatenate([images, np.zeros((pad, *images.shape[1:]), np.float32)])
    y = np.concatenate([labels, np.zeros(pad, np.int32)])
    batched = lambda a: a.reshape(-1, batch_size, *a.shape[1:])

    @jax.jit
    def run(variables, calib, x, y, w, child):
        if variables.get("batch_stats"):

            def recal(stats, xb):
                _, new = net.apply({**variables, "batch_stats": stats}, xb, child, train=True,
                                   mutable=["batch_stats"])  # fmt: skip
                return new["batch_stats"], None

            stats, _ = jax.lax.scan(recal, variables["batch_stats"], calib)
            variables = {**variables, "batch_stats": stats}

        def score(total, batch):
            xb, yb, wb = batch
            logits = net.apply(variables, xb, child)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
            correct = (jnp.argmax(logits, -1) == yb).astype(jnp.float32)
            return (total[0] + jnp.sum(correct * wb), total[1] + jnp.sum(loss * wb)), None

        (correct, loss), _ = jax.lax.scan(score, (0.0, 0.0), (x, y, w))
        return correct, loss

    inputs: dict[int, tuple] = {}

    def at(resolution: int):
        if resolution not in inputs:
            resize = lambda a: np.asarray(
                a if a.shape[1] == resolution else jax.image.resize(
                    a, (len(a), resolution, resolution, a.shape[-1]), "bilinear"
                )
            )  # fmt: skip
            inputs[resolution] = (
                batched(resize(calibration[: n_calib * batch_size])),
                batched(resize(padded)),
            )
        return inputs[resolution]

    def evaluate(arch) -> dict[str, float]:
        calib, x = at(arch.resolution)
        correct, loss = run(variables, calib, x, batched(y), batched(weights), space.encode(arch))
        return {
            "accuracy": float(correct) / len(images),
            "loss": float(loss) / len(images),
            **space.cost(arch, channels=images.shape[-1]),
        }

    return evaluate
