"""Signal propagation: per-block statistics of a network's activations.

Brock, De and Smith 2021, "Characterizing signal propagation to close the
performance gap in unnormalized ResNets" (Sec. 3): a Signal Propagation Plot
shows, for the output of every residual block on one batch, the average over
channels of the squared channel mean and of the channel variance. A BN-ResNet
keeps both bounded (the variance grows within a stage and is reset at each
transition); an unnormalized ResNet's variance grows with depth, and its
channel means drift away from zero. Works on any Flax module: the block
outputs are captured with ``capture_intermediates``, the modules chosen by a
regex over their names.
"""

from __future__ import annotations

import re
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# The residual blocks of archjax's ResNets and NFNets: stage<i>_block<j>.
BLOCK_PATTERN = r"stage\d+_block\d+"


def _channel_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Average over channels (last axis) of the squared channel mean and channel variance."""
    x = x.astype(jnp.float32)
    axes = tuple(range(x.ndim - 1))
    return jnp.mean(jnp.square(jnp.mean(x, axis=axes))), jnp.mean(jnp.var(x, axis=axes))


def block_statistics(
    model: nn.Module,
    variables: Any,
    x: jax.Array,
    *,
    blocks: str = BLOCK_PATTERN,
    train: bool = True,
) -> dict[str, Any]:
    """Average squared channel mean and channel variance of each block's output.

    Args:
      model: a Flax module called as ``model.apply(variables, x, train=train)``.
      variables: its variables (e.g. freshly initialized, for the plot at init).
      x: one batch of inputs, channels last.
      blocks: regex that the *full name* of a block module matches (its own name,
        not its path); matching modules are taken in the order of the numbers in
        their names (``stage2_block10`` after ``stage2_block9``).
      train: the mode of the call; a BN network needs ``True`` (batch statistics),
        since at init its running statistics make BatchNorm the identity.

    Returns:
      ``{"blocks": [names], "avg_sq_mean": [n], "avg_var": [n]}`` (NumPy arrays).

    Raises:
      ValueError: no module of the network matches ``blocks``.

    Example:
      >>> v = model.init(jax.random.key(0), x)
      >>> block_statistics(model, v, x)["avg_var"]
    """
    pattern = re.compile(blocks)

    def capture(module: nn.Module, method_name: str) -> bool:
        return method_name == "__call__" and bool(module.name and pattern.fullmatch(module.name))

    # Every collection but the parameters may change in a call (BN's batch_stats in train mode).
    mutable = [c for c in variables if c != "params"] + ["intermediates"]
    _, state = model.apply(
        variables, x, train=train, capture_intermediates=capture, mutable=mutable
    )
    found = {}

    def collect(tree: Any) -> None:
        for name, sub in tree.items():
            if not isinstance(sub, dict):
                continue
            if pattern.fullmatch(name) and "__call__" in sub:
                found[name] = sub["__call__"][0]
            collect(sub)

    collect(flax.core.unfreeze(state.get("intermediates", {})))
    if not found:
        raise ValueError(f"No module of {type(model).__name__} has a name matching {blocks!r}.")
    names = sorted(found, key=lambda k: tuple(int(n) for n in re.findall(r"\d+", k)))
    stats = [_channel_stats(found[n]) for n in names]
    return {
        "blocks": names,
        "avg_sq_mean": np.array([float(s[0]) for s in stats]),
        "avg_var": np.array([float(s[1]) for s in stats]),
    }
