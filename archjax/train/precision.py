"""Mixed-precision policies: float32 master weights, low-precision compute.

Micikevicius et al., "Mixed Precision Training" (2018); with bfloat16 no loss
scaling is needed (its exponent range is float32's). archjax models already
separate the two: parameters are created float32 and the ``dtype`` knob is the
compute dtype (activations, matmul/conv inputs), logits come back float32. A
policy therefore only sets the model's ``dtype`` and the input dtype; gradients
(with respect to float32 parameters) and the optimizer stay float32.
"""

from __future__ import annotations

import dataclasses
import difflib

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True, kw_only=True)
class Policy:
    """Which dtype each part of training uses."""

    # Parameters and optimizer state (the master copy).
    param_dtype: jnp.dtype = jnp.float32
    # Activations and the inputs of convolutions and matmuls.
    compute_dtype: jnp.dtype = jnp.float32
    # Logits and the loss.
    output_dtype: jnp.dtype = jnp.float32

    def cast_input(self, x: jax.Array) -> jax.Array:
        """Casts a floating input batch to the compute dtype."""
        return x.astype(self.compute_dtype)


_POLICIES = {
    "fp32": Policy(),
    "bf16": Policy(compute_dtype=jnp.bfloat16),
}


def list_policies() -> list[str]:
    """Names accepted by :func:`get_policy`."""
    return sorted(_POLICIES)


def get_policy(name: str) -> Policy:
    """The named policy: ``fp32`` or ``bf16`` (bf16 compute, fp32 master weights).

    Example:
      >>> policy = get_policy("bf16")
      >>> model = archjax.models.create("resnet20", dtype=policy.compute_dtype)
    """
    if name not in _POLICIES:
        close = difflib.get_close_matches(name, _POLICIES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"Unknown precision {name!r}.{hint} Choices: {', '.join(list_policies())}."
        )
    return _POLICIES[name]
