"""Single-Path NAS: one superkernel per layer, each choice a thresholded kernel norm.

Stamoulis et al., "Single-Path NAS: Designing Hardware-Efficient ConvNets in less
than 4 Hours" (2019): "one single-path over-parameterized ConvNet to encode all
architectural decisions with shared convolutional kernel parameters". Every
searchable layer is an inverted-residual (MBConv) block, as in the paper, because
its choices live in ONE tensor, the depthwise superkernel ``[K, K, 1, e_max * cin]``:

- kernel size: the centred ``k_0 x k_0`` square is always used; ring ``i`` (the
  ``k_i`` square minus the ``k_{i-1}`` square) is used while ``||ring_i|| > t_k,i``
  for it and every smaller ring (3x3 inner vs 5x5 outer with ``kernels=(3, 5)``);
- expansion: channel group ``g`` (channels ``[e_{g-1} cin, e_g cin)`` of the
  kernel after the kernel-size decision) is used while ``||group_g|| > t_e,g`` for
  it and every earlier group. The first group's decision exists only on a layer
  that can be skipped (stride 1, as many input as output channels): off, the layer
  is the identity (the paper's skip option).

Each decision is the indicator ``1[norm - t >= 0]`` in the forward pass and has the
sigmoid's gradient in the backward pass (the paper's relaxation; its code's
``Indicator``), so the thresholds ``t`` (parameters initialised at 0, as in the
paper) learn by gradient together with the weights. The paper's runtime-aware loss
``CE + lambda * log R`` uses a latency model per layer; here ``R`` is the network's
multiply-accumulate count (:func:`macs`), bilinear in the decisions, so it is
differentiable and equals the decoded network's shape MACs exactly (what
:func:`archjax.quant.report` counts) when the decisions are 0/1.

:func:`decode` reads the architecture off the thresholds; :class:`SinglePathNet` is
that architecture as a standalone network with its own (smaller) parameters, to
train from scratch, and :func:`extract` slices the supernet's variables into it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from archjax.layers import norm_layer
from archjax.models.resnet_blocks import conv_init
from archjax.train import TrainState

_PIN = 1e6  # a threshold this far from any kernel norm fixes its decision (zero gradient)


class Layer(NamedTuple):
    """One searchable layer: input and output channels, stride, whether it may be skipped."""

    in_features: int
    features: int
    stride: int
    skippable: bool

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_features == self.features


@dataclasses.dataclass(frozen=True, kw_only=True)
class SinglePathArch:
    """A decoded network: per searchable layer, the kernel size and the expansion ratio;
    a skipped layer has kernel 0 and expansion 0."""

    kernels: tuple[int, ...]
    expansions: tuple[int, ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SinglePathSpace:
    """A stem, stages of searchable MBConv layers, global pooling and a classifier.

    Attributes:
      widths: output channels of each stage.
      depths: searchable layers per stage (>= 1).
      strides: stride of each stage's first layer (1 or 2).
      kernels: depthwise kernel sizes, odd and increasing; the superkernel is the last.
      expansions: expansion ratios (hidden = ratio x input channels), increasing.
      skip: layers with stride 1 and equal widths may be skipped.
      stem_width: channels of the 3x3 stem convolution.
      num_classes: classifier outputs.
      image_size: input height = width that :func:`macs` counts for.
      in_channels: input channels that :func:`macs` counts for.
    """

    widths: tuple[int, ...] = (8, 16, 24)
    depths: tuple[int, ...] = (2, 2, 2)
    strides: tuple[int, ...] = (1, 2, 2)
    kernels: tuple[int, ...] = (3, 5)
    expansions: tuple[int, ...] = (3, 6)
    skip: bool = True
    stem_width: int = 8
    num_classes: int = 10
    image_size: int = 8
    in_channels: int = 1

    def __post_init__(self):
        named = {"widths": self.widths, "depths": self.depths, "strides": self.strides}
        named.update(kernels=self.kernels, expansions=self.expansions)
        for name, value in named.items():
            if not value:
                raise ValueError(f"SinglePathSpace.{name} is an empty choice.")
            if any(int(v) != v or v < 1 for v in value):
                raise ValueError(f"SinglePathSpace.{name} must hold positive integers: {value}.")
        if not len(self.widths) == len(self.depths) == len(self.strides):
            raise ValueError(
                f"SinglePathSpace.widths, depths and strides have {len(self.widths)}, "
                f"{len(self.depths)} and {len(self.strides)} stages; give the same number."
            )
        if any(k % 2 == 0 for k in self.kernels):
            raise ValueError(f"SinglePathSpace.kernels must be odd: {self.kernels}.")
        for name in ("kernels", "expansions"):
            value = getattr(self, name)
            if list(value) != sorted(set(value)):
                raise ValueError(f"SinglePathSpace.{name} must be increasing: {value}.")
        if any(s not in (1, 2) for s in self.strides):
            raise ValueError(f"SinglePathSpace.strides must be 1 or 2: {self.strides}.")
        for name in ("stem_width", "num_classes", "image_size", "in_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"SinglePathSpace.{name} must be >= 1, got {getattr(self, name)}.")

    def layers(self) -> tuple[Layer, ...]:
        """The searchable layers in order."""
        out, cin = [], self.stem_width
        for width, depth, stride in zip(self.widths, self.depths, self.strides, strict=True):
            for j in range(depth):
                s = stride if j == 0 else 1
                out.append(Layer(cin, width, s, self.skip and s == 1 and cin == width))
                cin = width
        return tuple(out)

    def largest(self) -> SinglePathArch:
        n = len(self.layers())
        return SinglePathArch(
            kernels=(self.kernels[-1],) * n, expansions=(self.expansions[-1],) * n
        )

    def sample(self, rng: np.random.Generator) -> SinglePathArch:
        """A uniformly random architecture (each layer's choices drawn independently)."""
        kernels, expansions = [], []
        for layer in self.layers():
            e = (0, *self.expansions) if layer.skippable else self.expansions
            e = int(e[rng.integers(len(e))])
            k = int(self.kernels[rng.integers(len(self.kernels))])
            kernels.append(k if e else 0)
            expansions.append(e)
        return SinglePathArch(kernels=tuple(kernels), expansions=tuple(expansions))

    def check(self, arch: SinglePathArch) -> None:
        """Raises a ValueError naming the first choice of ``arch`` outside the space."""
        layers = self.layers()
        for name in ("kernels", "expansions"):
            if len(getattr(arch, name)) != len(layers):
                raise ValueError(
                    f"arch.{name} has {len(getattr(arch, name))} entries for "
                    f"{len(layers)} searchable layers."
                )
        for i, (layer, k, e) in enumerate(zip(layers, arch.kernels, arch.expansions, strict=True)):
            if e == 0 and k == 0 and layer.skippable:
                continue
            if e not in self.expansions:
                allowed = (0, *self.expansions) if layer.skippable else self.expansions
                raise ValueError(f"arch.expansions[{i}] = {e} is not one of {allowed}.")
            if k not in self.kernels:
                raise ValueError(f"arch.kernels[{i}] = {k} is not one of {self.kernels}.")


def _square(size: int, k: int) -> np.ndarray:
    """``[size, size]``: ones on the centred ``k x k`` square."""
    r = np.abs(np.arange(size) - (size - 1) // 2)
    inside = (2 * r + 1) <= k
    return (inside[:, None] & inside[None, :]).astype(np.float32)


@jax.custom_vjp
def indicator(x: jax.Array) -> jax.Array:
    """``1[x >= 0]`` exactly, with the gradient of ``sigmoid(x)`` (Single-Path NAS)."""
    return (x >= 0).astype(x.dtype)


def _indicator_fwd(x):
    return indicator(x), x


def _indicator_bwd(x, g):
    s = jax.nn.sigmoid(x)
    return (g * s * (1 - s),)


indicator.defvjp(_indicator_fwd, _indicator_bwd)


def _ring(size: int, kernels: tuple[int, ...], i: int) -> np.ndarray:
    """Ring ``i`` of a ``size x size`` kernel: the ``kernels[i]`` square minus the one before."""
    return _square(size, kernels[i]) - _square(size, kernels[i - 1] if i else 0)


def _superkernel(space: SinglePathSpace, layer: Layer, kernel, t_kernel, t_expansion):
    """The superkernel with one layer's decisions applied, ``(kernel, kernel gates [n_k],
    channel-group gates [n_e], per-channel gates)``; a gate is the product of its
    decision and every earlier one (kernel gate 0 is always 1)."""
    size, ks = kernel.shape[0], space.kernels
    gate, kernel_gates = jnp.ones(()), [jnp.ones(())]
    for i in range(1, len(ks)):
        norm = jnp.linalg.norm(kernel * _ring(size, ks, i)[:, :, None, None])
        gate = gate * indicator(norm - t_kernel[i - 1])
        kernel_gates.append(gate)
    factor = sum(g * _ring(size, ks, i) for i, g in enumerate(kernel_gates))
    kernel = kernel * factor[:, :, None, None]
    gate, group_gates, lo = jnp.ones(()), [], 0
    offset = 0 if layer.skippable else 1  # on a skippable layer t_expansion[0] is the skip
    for g, e in enumerate(space.expansions):
        hi = e * layer.in_features
        if g or layer.skippable:
            gate = gate * indicator(jnp.linalg.norm(kernel[..., lo:hi]) - t_expansion[g - offset])
        group_gates.append(gate)
        lo = hi
    group_gates = jnp.stack(group_gates)
    sizes = np.diff(np.asarray((0, *space.expansions))) * layer.in_features
    channels = group_gates[np.repeat(np.arange(len(sizes)), sizes)]
    return kernel * channels, jnp.stack(kernel_gates), group_gates, channels


def _layer_macs(space: SinglePathSpace, layer: Layer, size_in: int, kernel_gates, group_gates):
    """Shape MACs of one layer, bilinear in its gates: expand 1x1, depthwise, project 1x1."""
    size_out = (size_in - 1) // layer.stride + 1
    e = np.diff(np.asarray((0, *space.expansions)))
    k2 = np.diff(np.asarray((0, *space.kernels)) ** 2)
    hidden = jnp.sum(group_gates * e) * layer.in_features
    ksq = jnp.sum(kernel_gates * k2)
    per_hidden = size_in**2 * layer.in_features + size_out**2 * (layer.features + ksq)
    return hidden * per_hidden, size_out


def _stem_head_macs(space: SinglePathSpace) -> int:
    stem = space.image_size**2 * space.in_channels * space.stem_width * 9
    return stem + space.widths[-1] * space.num_classes


def gates(space: SinglePathSpace, params: Any) -> list[tuple[jax.Array, jax.Array]]:
    """Per searchable layer, the (kernel, channel-group) gates that ``params`` select."""
    out = []
    for i, layer in enumerate(space.layers()):
        p = params[f"layer{i + 1}"]
        _, kg, gg, _ = _superkernel(
            space, layer, p["dw"]["kernel"], p.get("t_kernel"), p.get("t_expansion")
        )
        out.append((kg, gg))
    return out


def macs(space: SinglePathSpace, params: Any) -> jax.Array:
    """Multiply-accumulates of one image through the network that ``params`` select.

    Differentiable in the thresholds and kernels (through the indicators' sigmoid
    gradient); in the forward pass it equals :func:`arch_macs` of :func:`decode`, the
    shape MACs of the decoded network (zero-padding taps included, as
    :func:`archjax.quant.report` counts).
    """
    total, size = jnp.asarray(float(_stem_head_macs(space))), space.image_size
    for layer, (kg, gg) in zip(space.layers(), gates(space, params), strict=True):
        layer_macs, size = _layer_macs(space, layer, size, kg, gg)
        total = total + layer_macs
    return total


def _arch_gates(space: SinglePathSpace, arch: SinglePathArch):
    for k, e in zip(arch.kernels, arch.expansions, strict=True):
        kg = np.asarray([float(k >= c) for c in space.kernels])
        yield kg, np.asarray([float(e >= c) for c in space.expansions])


def arch_macs(space: SinglePathSpace, arch: SinglePathArch) -> int:
    """Shape MACs of one image through the network ``arch`` (exact integer count)."""
    space.check(arch)
    total, size = _stem_head_macs(space), space.image_size
    for layer, (kg, gg) in zip(space.layers(), _arch_gates(space, arch), strict=True):
        layer_macs, size = _layer_macs(space, layer, size, kg, gg)
        total += int(round(float(layer_macs)))
    return total


def decode(space: SinglePathSpace, params: Any) -> SinglePathArch:
    """The architecture that the thresholds in ``params`` select (the hard decisions)."""
    kernels, expansions = [], []
    for kg, gg in jax.device_get(gates(space, params)):
        e = max((c for c, g in zip(space.expansions, gg, strict=True) if g > 0.5), default=0)
        k = max(c for c, g in zip(space.kernels, kg, strict=True) if g > 0.5)
        kernels.append(int(k) if e else 0)
        expansions.append(int(e))
    return SinglePathArch(kernels=tuple(kernels), expansions=tuple(expansions))


def pin(space: SinglePathSpace, params: Any, arch: SinglePathArch) -> Any:
    """``params`` whose thresholds select ``arch`` (far from every norm: no gradient)."""
    space.check(arch)
    out = dict(params)
    for i, (layer, k, e) in enumerate(
        zip(space.layers(), arch.kernels, arch.expansions, strict=True)
    ):
        p = dict(out[f"layer{i + 1}"])
        if len(space.kernels) > 1:
            on = [k >= c for c in space.kernels[1:]]
            p["t_kernel"] = jnp.asarray([-_PIN if o else _PIN for o in on], jnp.float32)
        chosen = space.expansions if layer.skippable else space.expansions[1:]
        if chosen:
            p["t_expansion"] = jnp.asarray([-_PIN if e >= c else _PIN for c in chosen], jnp.float32)
        out[f"layer{i + 1}"] = p
    return out


def _depthwise(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """Depthwise convolution with symmetric padding, so every kernel size keeps the grid."""
    pad = (kernel.shape[0] - 1) // 2
    return jax.lax.conv_general_dilated(  # looked up at call time: archjax.quant sees it
        x,
        kernel,
        (stride, stride),
        [(pad, pad), (pad, pad)],
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1],
    )


def _depthwise_init(key, shape, dtype=jnp.float32):
    """He-normal over a depthwise kernel's own fan-in ``k * k`` (one input channel)."""
    return nn.initializers.variance_scaling(2.0, "fan_in", "normal")(key, shape, dtype)


class _Kernel(nn.Module):
    """Holds a depthwise kernel ``[k, k, 1, channels]`` as its ``kernel`` parameter."""

    shape: tuple[int, ...]

    @nn.compact
    def __call__(self):
        return self.param("kernel", _depthwise_init, self.shape)


class _Block(nn.Module):
    """One MBConv layer; with ``space`` set, the searchable superkernel version."""

    layer: Layer
    hidden: int
    kernel_size: int
    space: SinglePathSpace | None = None

    @nn.compact
    def __call__(self, x, *, train: bool):
        layer, space = self.layer, self.space
        conv = functools.partial(nn.Conv, use_bias=False, kernel_init=conv_init)
        bn = functools.partial(norm_layer, "batch", train=train)
        h = nn.relu(bn(name="expand_bn")(conv(self.hidden, (1, 1), name="expand")(x)))
        kernel = _Kernel((self.kernel_size, self.kernel_size, 1, self.hidden), name="dw")()
        skip_gate = channels = 1.0
        if space is not None:
            t_kernel = t_expansion = None
            if len(space.kernels) > 1:
                t_kernel = self.param("t_kernel", nn.initializers.zeros, (len(space.kernels) - 1,))
            n_e = len(space.expansions) - 1 + int(layer.skippable)
            if n_e:
                t_expansion = self.param("t_expansion", nn.initializers.zeros, (n_e,))
            kernel, _, group_gates, channels = _superkernel(
                space, layer, kernel, t_kernel, t_expansion
            )
            skip_gate = group_gates[0]
        # Unused channels are exact zeros after the BatchNorm (not its bias), as in the child.
        h = nn.relu(bn(name="dw_bn")(_depthwise(h, kernel, layer.stride))) * channels
        y = bn(name="project_bn")(conv(layer.features, (1, 1), name="project")(h))
        return x + skip_gate * y if layer.residual else y


def _stem(space: SinglePathSpace, x, train: bool):
    x = nn.Conv(space.stem_width, (3, 3), padding=1, use_bias=False, kernel_init=conv_init,
                name="stem")(x)  # fmt: skip
    return nn.relu(norm_layer("batch", train=train, name="stem_bn")(x))


def _head(space: SinglePathSpace, x):
    return nn.Dense(space.num_classes, name="head")(jnp.mean(x, axis=(1, 2)))


class SinglePathSuperNet(nn.Module):
    """The over-parameterized network of a :class:`SinglePathSpace`: every layer has the
    largest kernel and expansion, and the thresholds ``t_kernel``/``t_expansion``."""

    space: SinglePathSpace

    @property
    def num_classes(self) -> int:
        return self.space.num_classes

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        space = self.space
        x = _stem(space, x, train)
        for i, layer in enumerate(space.layers()):
            hidden = space.expansions[-1] * layer.in_features
            x = _Block(layer, hidden, space.kernels[-1], space, name=f"layer{i + 1}")(
                x, train=train
            )
        return _head(space, x)


class SinglePathNet(nn.Module):
    """The standalone network of one :class:`SinglePathArch` (skipped layers absent)."""

    space: SinglePathSpace
    arch: SinglePathArch

    @property
    def num_classes(self) -> int:
        return self.space.num_classes

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        space = self.space
        space.check(self.arch)
        x = _stem(space, x, train)
        for i, (layer, k, e) in enumerate(
            zip(space.layers(), self.arch.kernels, self.arch.expansions, strict=True)
        ):
            if e:
                x = _Block(layer, e * layer.in_features, k, name=f"layer{i + 1}")(x, train=train)
        return _head(space, x)


def _cut(part: str, w: jax.Array, hidden: int, lo: int, k: int) -> jax.Array:
    """The child's part of one block variable (leading hidden channels, centred kernel)."""
    if part == "expand":
        return w[..., :hidden]
    if part == "dw":
        return w[lo : lo + k, lo : lo + k, :, :hidden]
    if part == "project":
        return w[:, :, :hidden, :]
    return w if part == "project_bn" else w[:hidden]  # expand_bn, dw_bn


def extract(space: SinglePathSpace, variables: Any, arch: SinglePathArch):
    """``(SinglePathNet(space, arch), its variables sliced from the supernet's)``.

    The child uses the centred ``k x k`` of each superkernel and the leading
    ``e * cin`` hidden channels; its outputs equal the supernet's with
    :func:`pin` ``(space, params, arch)`` up to float summation order.
    """
    space.check(arch)
    size = space.kernels[-1]
    out: dict[str, Any] = {}
    for collection, tree in variables.items():
        kept = {}
        for name, sub in tree.items():
            if not name.startswith("layer"):
                kept[name] = sub
                continue
            i = int(name[5:]) - 1
            hidden = arch.expansions[i] * space.layers()[i].in_features
            if not hidden:
                continue
            lo = (size - arch.kernels[i]) // 2
            k = arch.kernels[i]
            block = {
                part: {key: _cut(part, w, hidden, lo, k) for key, w in leaves.items()}
                for part, leaves in sub.items()
                if not part.startswith("t_")  # the thresholds are the search's, not the child's
            }
            kept[name] = block
        out[collection] = kept
    return SinglePathNet(space, arch), out


def cost_penalty(total_macs: jax.Array, *, weight: float, target: float | None = None) -> jax.Array:
    """The runtime term of the loss: ``weight * log(macs)`` (the paper's, ``target=None``)
    or ``weight * max(log(macs / target), 0)``: no pull below a MACs budget."""
    if target is None:
        return weight * jnp.log(total_macs)
    return weight * jnp.maximum(jnp.log(total_macs / target), 0.0)


def make_search_step(
    net: SinglePathSuperNet,
    tx: optax.GradientTransformation,
    *,
    cost_weight: float,
    target_macs: float | None = None,
):
    """The Single-Path search step ``(state, batch) -> (state, metrics)``.

    Weights and thresholds (both in ``params``) take one ``tx`` update on
    ``cross-entropy + cost_penalty(macs)``. A separate function from
    :func:`archjax.train.make_train_step` because its objective adds a term computed
    from the parameters, which the one train step's recipes do not; it has that step's
    signature, so :func:`archjax.train.jit_train_step` compiles it for any mesh.

    Args:
      net: the supernet.
      tx: the optimizer of ``state.opt_state`` (e.g. ``optax.multi_transform`` with a
        faster rate for the ``t_*`` thresholds).
      cost_weight: ``lambda`` of :func:`cost_penalty`.
      target_macs: the MACs budget of :func:`cost_penalty` (None: the paper's term).

    Returns:
      The pure step; metrics ``loss`` (the total), ``cross_entropy``, ``accuracy``
      and ``macs`` (of the network selected before the update).

    Example:
      >>> step = jax.jit(make_search_step(net, optax.adam(1e-3), cost_weight=0.1))
      >>> state, metrics = step(state, {"image": x, "label": y})
    """
    if cost_weight < 0:
        raise ValueError(f"cost_weight must be >= 0, got {cost_weight}.")
    if target_macs is not None and target_macs <= 0:
        raise ValueError(f"target_macs must be > 0, got {target_macs}.")
    space = net.space

    def step(state: TrainState, batch: dict[str, jax.Array]):
        def loss_fn(params):
            variables = {"params": params, "batch_stats": state.batch_stats}
            logits, updates = net.apply(
                variables, batch["image"], train=True, mutable=["batch_stats"]
            )
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
            total = macs(space, params)
            loss = ce + cost_penalty(total, weight=cost_weight, target=target_macs)
            aux = (ce, total, logits, updates["batch_stats"])
            return loss, aux

        (loss, (ce, total, logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        metrics = {
            "loss": loss,
            "cross_entropy": ce,
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
            "macs": total,
        }
        new = state.apply_updates(updates, opt_state, batch_stats)
        return new, metrics

    return step
