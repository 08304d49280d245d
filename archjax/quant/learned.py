"""Trainable quantization parameters: LSQ step sizes and PACT clipping levels."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from archjax.quant.formats import IntFormat

__all__ = ["lsq_fake_quant", "pact"]

Array = jax.Array


def _check_lsq_format(fmt, owner: str) -> None:
    if not isinstance(fmt, IntFormat):
        raise ValueError(f"{owner} needs an IntFormat, got fmt={fmt!r}")
    if fmt.qmax < 1:
        raise ValueError(
            f"{owner} needs qmax >= 1; {fmt.name} has qmax={fmt.qmax} (use bits >= 2 or unsigned)"
        )


def _sum_to_shape(g: Array, shape: tuple[int, ...]) -> Array:
    """Sums a broadcast gradient back to the parameter's shape."""
    lead = g.ndim - len(shape)
    kept = tuple(lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1)
    axes = tuple(range(lead)) + kept
    return jnp.sum(g, axis=axes, keepdims=True).reshape(shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _lsq(x, scale, qmin, qmax, grad_scale):
    return jnp.clip(jnp.round(x / scale), qmin, qmax) * scale


def _lsq_fwd(x, scale, qmin, qmax, grad_scale):
    return _lsq(x, scale, qmin, qmax, grad_scale), (x, scale)


def _lsq_bwd(qmin, qmax, grad_scale, res, g):
    x, scale = res
    v = x / scale
    below, above = v <= qmin, v >= qmax
    inside = ~(below | above)
    # Esser et al. (2020), eq. 3: d x_hat / d s = round(v) - v inside, qmin / qmax outside.
    ds = jnp.where(inside, jnp.round(v) - v, jnp.where(below, float(qmin), float(qmax)))
    gx = jnp.where(inside, g, 0.0)
    gs = _sum_to_shape(g * ds * grad_scale, jnp.shape(scale))
    return gx, gs


_lsq.defvjp(_lsq_fwd, _lsq_bwd)


def lsq_fake_quant(
    x: Array, scale: Array, fmt: IntFormat, *, grad_scale: float | None = None
) -> Array:
    """Learned step size quantization (LSQ, Esser et al., ICLR 2020).

    Forward: ``x_hat = s * clip(round(x / s), qmin, qmax)`` (symmetric; LSQ has no
    zero point). Backward: ``d x_hat / d x = 1`` inside ``[qmin * s, qmax * s]`` and
    0 outside (STE); ``d x_hat / d s = round(x / s) - x / s`` inside, ``qmin`` below
    and ``qmax`` above, times the gradient scale ``g = 1 / sqrt(N * Qp)`` with
    ``Qp = qmax`` and ``N`` the number of elements that share one scale (the
    paper's ``N`` for a per-tensor scale: weights in the layer or features per
    activation). A per-channel ``scale`` (shape broadcastable to ``x``) gets its own
    gradient per channel.

    Args:
        x: tensor to quantize.
        scale: positive step size(s), broadcastable to ``x``; a trainable parameter
            (initialize it, per the paper, at ``2 * mean|x| / sqrt(qmax)``).
        fmt: a symmetric ``IntFormat`` with ``qmax >= 1``.
        grad_scale: overrides ``g``; ``None`` uses the paper's formula.

    Returns:
        The fake-quantized tensor, same shape and dtype as ``x``.

    Example:
        >>> s = jnp.asarray(2 * jnp.mean(jnp.abs(w)) / jnp.sqrt(7.0))
        >>> w_hat = lsq_fake_quant(w, s, IntFormat(bits=4))
    """
    _check_lsq_format(fmt, "lsq_fake_quant")
    if not fmt.symmetric:
        raise ValueError(
            f"lsq_fake_quant needs a symmetric IntFormat (LSQ has no zero point), got {fmt.name}"
        )
    x = jnp.asarray(x)
    scale = jnp.asarray(scale, jnp.float32)
    if grad_scale is None:
        per_scale = max(x.size // max(scale.size, 1), 1)
        grad_scale = 1.0 / math.sqrt(per_scale * fmt.qmax)
    y = _lsq(x.astype(jnp.float32), scale, fmt.qmin, fmt.qmax, float(grad_scale))
    return y.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _pact(x, alpha, qmax, signed):
    lo = -alpha if signed else 0.0
    step = alpha / qmax
    return jnp.round(jnp.clip(x, lo, alpha) / step) * step


def _pact_fwd(x, alpha, qmax, signed):
    return _pact(x, alpha, qmax, signed), (x, alpha)


def _pact_bwd(qmax, signed, res, g):
    x, alpha = res
    lo = -alpha if signed else 0.0
    above = x >= alpha
    below = (x <= lo) if signed else jnp.zeros_like(above)
    # Choi et al. (2018), eq. 3: the rounding is straight-through, so d y_q / d alpha
    # is 1 where x is clipped at alpha (and -1 at -alpha in the signed variant).
    da = above.astype(jnp.float32) - below.astype(jnp.float32)
    gx = jnp.where((x > lo) & (x < alpha) if signed else (x >= 0) & (x < alpha), g, 0.0)
    return gx, _sum_to_shape(g * da, jnp.shape(alpha))


_pact.defvjp(_pact_fwd, _pact_bwd)


def pact(x: Array, alpha: Array, fmt: IntFormat) -> Array:
    """Parameterized clipping activation (PACT, Choi et al., 2018) with a learned ``alpha``.

    Forward: ``y = clip(x, 0, alpha)`` quantized to ``qmax = 2**k - 1`` uniform steps
    of ``alpha / qmax``. Backward: ``dy/dx = 1`` on ``[0, alpha)`` and 0 elsewhere;
    ``dy/d alpha = 1`` where ``x >= alpha`` and 0 elsewhere (the paper's STE). A
    signed ``fmt`` gives the symmetric variant ``clip(x, -alpha, alpha)`` with
    ``qmax = 2**(k-1) - 1`` steps per side, ``dy/dx = 1`` on ``(-alpha, alpha)`` and
    ``dy/d alpha = -1`` where ``x <= -alpha``.

    Args:
        x: activations.
        alpha: positive clipping level(s), broadcastable to ``x``; a trainable parameter
            (the paper initializes it at 10 and regularizes it with L2).
        fmt: an ``IntFormat``; unsigned for ReLU activations, as in the paper.

    Returns:
        The quantized activations, same shape and dtype as ``x``.

    Example:
        >>> y = pact(jax.nn.relu(h), jnp.float32(6.0), IntFormat(bits=4, signed=False))
    """
    _check_lsq_format(fmt, "pact")
    x = jnp.asarray(x)
    y = _pact(x.astype(jnp.float32), jnp.asarray(alpha, jnp.float32), fmt.qmax, fmt.signed)
    return y.astype(x.dtype)
