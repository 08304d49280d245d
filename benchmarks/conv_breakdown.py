r"""Where archjax loses train-step time to PyTorch on CPU: forward pass vs one conv.

Times, side by side in one run, (a) the eval-mode forward pass of CIFAR ResNet-20
(batch 128, 32 px) and (b) a single 3x3 16->16 convolution at 32x32 (the most
common conv of that network), in JAX/XLA and in PyTorch; prints the ratios
(torch time / jax time; below 1 means JAX is slower). Compare with the train-step
ratio of ``benchmarks/models.py`` to see how much the backward pass adds.

  python -m benchmarks.conv_breakdown
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from archjax import models
from benchmarks.models import _torch_model


def _seconds(fn, n: int = 10) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def main(rounds: int = 2) -> None:
    model = models.create("resnet20", num_classes=10)
    x = np.random.default_rng(0).normal(size=(128, 32, 32, 3)).astype(np.float32)
    variables = jax.jit(lambda k: model.init(k, x[:1], train=False))(jax.random.key(0))
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    conv = jax.jit(
        lambda x, w: jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    )
    xs = np.random.default_rng(1).normal(size=(128, 32, 32, 16)).astype(np.float32)
    ws = np.random.default_rng(2).normal(size=(3, 3, 16, 16)).astype(np.float32)
    torch_net = _torch_model("resnet20", 10).eval()
    torch_conv = torch.nn.Conv2d(16, 16, 3, 1, 1, bias=False)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    xst = torch.from_numpy(xs.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        for r in range(rounds):
            fj = _seconds(lambda: forward(variables, x).block_until_ready())
            ft = _seconds(lambda: torch_net(xt))
            cj = _seconds(lambda: conv(xs, ws).block_until_ready())
            ct = _seconds(lambda: torch_conv(xst))
            print(
                f"round {r + 1}: resnet20 forward jax {fj * 1e3:.1f} ms, torch {ft * 1e3:.1f} ms "
                f"(ratio {ft / fj:.2f}) | conv 3x3 16->16 @32 jax {cj * 1e3:.1f} ms, "
                f"torch {ct * 1e3:.1f} ms (ratio {ct / cj:.2f})",
                flush=True,
            )


def _conv(x, w):
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _grads_xla(x, w, g):
    """Input and filter gradients of the 3x3 SAME conv: XLA's backward convolutions."""
    return jax.vjp(_conv, x, w)[1](g)


def _grads_im2col(x, w, g):
    """The same gradients as matmuls over im2col patches (one per gradient)."""
    n, h, wd, c = x.shape
    kh, kw, _, o = w.shape
    patches = jax.lax.conv_general_dilated_patches(
        x, (kh, kw), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )  # [n, h, w, c * kh * kw], feature order (c, kh, kw)
    gm = g.reshape(-1, o)
    dw = (patches.reshape(-1, c * kh * kw).T @ gm).reshape(c, kh, kw, o).transpose(1, 2, 0, 3)
    wm = w.transpose(2, 0, 1, 3).reshape(c * kh * kw, o)
    dpatches = (gm @ wm.T).reshape(n, h, wd, c, kh, kw)
    # col2im: each patch entry (i, j) adds back to the input pixel it was read from.
    padded = jnp.zeros((n, h + kh - 1, wd + kw - 1, c), x.dtype)
    for i in range(kh):
        for j in range(kw):
            padded = padded.at[:, i : i + h, j : j + wd].add(dpatches[..., i, j])
    return padded[:, kh // 2 : kh // 2 + h, kw // 2 : kw // 2 + wd], dw


def _grads_shifted(x, w, g):
    """The same gradients as nine shifted matmuls, one per kernel tap."""
    n, h, wd, c = x.shape
    kh, kw, _, o = w.shape
    xp = jnp.pad(x, ((0, 0), (kh // 2,) * 2, (kw // 2,) * 2, (0, 0)))
    gp = jnp.pad(g, ((0, 0), (kh // 2,) * 2, (kw // 2,) * 2, (0, 0)))
    dx = jnp.zeros_like(x)
    dw = []
    for i in range(kh):
        for j in range(kw):
            tap = xp[:, i : i + h, j : j + wd].reshape(-1, c)
            dw.append(tap.T @ g.reshape(-1, o))
            shifted = gp[:, kh - 1 - i : kh - 1 - i + h, kw - 1 - j : kw - 1 - j + wd]
            dx = dx + (shifted.reshape(-1, o) @ w[i, j].T).reshape(n, h, wd, c)
    return dx, jnp.stack(dw).reshape(kh, kw, c, o)


def gradients(rounds: int) -> None:
    """One 3x3 16->16 conv at 32x32, batch 128: backward pass, three JAX routes vs torch."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(128, 32, 32, 16)).astype(np.float32)
    w = rng.normal(size=(3, 3, 16, 16)).astype(np.float32)
    g = rng.normal(size=(128, 32, 32, 16)).astype(np.float32)
    routes = {"xla": _grads_xla, "im2col": _grads_im2col, "shifted": _grads_shifted}
    routes = {name: jax.jit(fn) for name, fn in routes.items()}
    want = routes["xla"](x, w, g)
    for name, fn in routes.items():  # all three compute the same gradients
        for a, b in zip(fn(x, w, g), want, strict=True):
            scale = float(np.abs(b).max())  # sums of 10^5 products: float32 rounding grows
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale, err_msg=name)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
    wt = torch.from_numpy(w.transpose(3, 2, 0, 1).copy()).requires_grad_()
    gt = torch.from_numpy(g.transpose(0, 3, 1, 2).copy())

    def torch_grads():
        out = torch.nn.functional.conv2d(xt, wt, padding=1)
        torch.autograd.grad(out, (xt, wt), gt)

    for r in range(rounds):
        tt = _seconds(torch_grads)
        times = {
            name: _seconds(lambda fn=fn: jax.block_until_ready(fn(x, w, g)))
            for name, fn in routes.items()
        }
        print(
            f"round {r + 1}: conv 3x3 16->16 @32 backward (input + filter gradients): torch "
            f"{tt * 1e3:.1f} ms | "
            + " | ".join(
                f"jax {k} {v * 1e3:.1f} ms ({v / times['xla']:.1f}x xla)" for k, v in times.items()
            ),  # fmt: skip
            flush=True,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--gradients", action="store_true", help="also the backward routes")
    args = parser.parse_args()
    main(args.rounds)
    if args.gradients:
        gradients(args.rounds)
