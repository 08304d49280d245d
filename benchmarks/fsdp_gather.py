r"""Per-device memory of the train step with and without the explicit FSDP gather.

On meshes with ``fsdp`` and ``model`` both > 1, ``archjax.train.jit_train_step``
gathers the parameters over ``fsdp`` at the top of the step
(``archjax.parallel.gather_fsdp``: a sharding constraint that works around XLA
miscomputing convolutions there, docs/distributed.md). This compiles the step
with the gather on every mesh ("gather") and without it ("no_gather": plain
``jax.jit`` with the same shardings and donation, wrong on ``d2f2m2``, so only
measured) on 8 simulated CPU devices, and prints XLA's compiled memory analysis
per device: arguments, outputs, donated (aliased) bytes, temporaries, and the
peak estimate ``argument + output - alias + temp`` with its ratio between the
two (XLA:CPU's own ``peak_memory_in_bytes`` leaves out the temporaries: it
reports about the argument bytes here). The last column says which program
``jit_train_step`` compiles on that mesh. Nothing runs; only compiles.

  python -m benchmarks.fsdp_gather                                   # resnet20, 32 px, 128
  python -m benchmarks.fsdp_gather --model=resnet18 --batch=64 --meshes=fsdp8,d2f2m2
"""

from __future__ import annotations

import argparse
import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    )

import jax
import optax

from archjax import models, parallel
from archjax.train import abstract_train_state, make_train_step, state_sharding

MESHES = {
    "fsdp8": {"data": 1, "fsdp": 8, "model": 1},
    "d2f4": {"data": 2, "fsdp": 4, "model": 1},
    "d2f2m2": {"data": 2, "fsdp": 2, "model": 2},
}
FIELDS = ("argument", "output", "alias", "temp", "peak")


def _memory(compiled) -> dict[str, int]:
    stats = compiled.memory_analysis()
    out = {f: getattr(stats, f"{f}_size_in_bytes") for f in FIELDS[:-1]}
    out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def measure(model_name: str, size: int, batch: int, mesh_name: str) -> dict[str, dict[str, int]]:
    """Compiled per-device memory of one step, ``{"gather": ..., "no_gather": ...}``."""
    model = models.create(model_name, num_classes=10)
    tx = optax.sgd(0.1, momentum=0.9)
    mesh = parallel.make_mesh(shape=MESHES[mesh_name])
    state = abstract_train_state(model, tx, input_shape=(1, size, size, 3), mesh=mesh)
    data = parallel.data_sharding(mesh)
    images = jax.ShapeDtypeStruct((batch, size, size, 3), jax.numpy.float32, sharding=data)
    labels = jax.ShapeDtypeStruct((batch,), jax.numpy.int32, sharding=data)
    batch_spec = {"image": images, "label": labels}
    step = make_train_step(model, tx)
    state_sh = state_sharding(state, mesh)
    no_gather = jax.jit(
        step,
        in_shardings=(state_sh, data),
        out_shardings=(state_sh, parallel.replicated(mesh)),
        donate_argnums=0,
    )
    gather = jax.jit(  # gather_fsdp on every mesh (jit_train_step: only where model > 1)
        lambda s, b: step(
            s.replace(params=parallel.gather_fsdp({"params": s.params}, mesh)["params"]), b
        ),
        in_shardings=(state_sh, data),
        out_shardings=(state_sh, parallel.replicated(mesh)),
        donate_argnums=0,
    )
    return {
        name: _memory(fn.lower(state, batch_spec).compile())
        for name, fn in (("gather", gather), ("no_gather", no_gather))
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--meshes", default="fsdp8,d2f4,d2f2m2")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.meshes.split(",")) - set(MESHES))
    if unknown:
        parser.error(f"unknown mesh {unknown[0]!r}; choose from {', '.join(MESHES)}")
    params = sum(
        x.size
        for x in jax.tree.leaves(
            abstract_train_state(
                models.create(args.model, num_classes=10),
                optax.identity(),
                input_shape=(1, args.size, args.size, 3),
            ).params
        )
    )
    print(
        f"{args.model}: {params / 1e6:.2f}M parameters, {args.size} px, global batch {args.batch}"
    )
    print("per device, MiB:  " + " ".join(f"{f:>9}" for f in FIELDS) + "  peak ratio  archjax")
    for mesh_name in args.meshes.split(","):
        result = measure(args.model, args.size, args.batch, mesh_name)
        for name in ("no_gather", "gather"):
            row = " ".join(f"{result[name][f] / 2**20:9.2f}" for f in FIELDS)
            ratio = result[name]["peak"] / result["no_gather"]["peak"]
            used = (name == "gather") == (MESHES[mesh_name]["model"] > 1)
            print(f"{mesh_name:>7} {name:>9}: {row}  {ratio:10.3f}  {'<-' if used else ''}")


if __name__ == "__main__":
    main()
