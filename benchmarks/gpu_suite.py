r"""GPU suite: archjax vs timm eager vs timm ``torch.compile``, bf16 train steps, with MFU.

One call on a fresh GPU machine (``bash benchmarks/gpu_suite.sh``, which installs the
carried wheels first) does, in order:

1. the bf16 matmul ceiling of this GPU, measured (8192^3 products in jax and torch);
2. correctness: for each model, timm weights imported into archjax
   (:func:`archjax.models.load_torch_state_dict`), eval logits compared on the GPU in
   float32 (TF32 off) and in bf16; archjax's bf16 error against torch's float32 logits
   must stay within twice torch's own bf16 error (plus 1e-3 of the logit range);
3. timing: one SGD-momentum train step, bf16 compute, the same batch, interleaved rounds
   of archjax, timm eager and timm ``torch.compile`` (default mode; ``max-autotune`` in
   a subprocess when enough of ``--budget`` is left), channels-last for torch;
   images/s per round, median ratios and model-FLOPs utilization against the
   measured ceiling (3 x forward FLOPs per image, multiply-add = 2).

  python -m benchmarks.gpu_suite --models=resnet50,vit_base_patch16_224 --batch=256
  python -m benchmarks.gpu_suite --models=vit_base_patch16_224 --vit-attention=einsum,cudnn

Results go to docs/benchmarks.md ("GPU: against torch.compile").
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from archjax import models
from benchmarks.models import _jax_runner

_START = time.perf_counter()
# torch device; "cpu" only to smoke-test this script (--smoke), never for numbers.
DEVICE = "cuda"


def _sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _elapsed() -> float:
    return time.perf_counter() - _START


def _log(msg: str) -> None:
    print(f"[{_elapsed():6.1f}s] {msg}", flush=True)


def matmul_ceiling(n: int, reps: int = 10) -> dict[str, float]:
    """Measured dense bf16 TFLOP/s of one ``n^3`` product, in jax and in torch."""
    import torch

    out = {}
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.bfloat16)
    f = jax.jit(lambda x: x @ x)
    for _ in range(3):
        f(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(reps):
        y = f(a)
    y.block_until_ready()
    out["jax"] = 2 * n**3 * reps / (time.perf_counter() - t) / 1e12
    x = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    for _ in range(3):
        x @ x
    _sync()
    t = time.perf_counter()
    for _ in range(reps):
        x @ x
    _sync()
    out["torch"] = 2 * n**3 * reps / (time.perf_counter() - t) / 1e12
    del a, x
    return out


def _timm(name: str, num_classes: int, size: int):
    """A timm model with every norm parameter and statistic moved off its init."""
    import torch

    torch.manual_seed(0)
    tm = _create_timm(name, num_classes, size)
    with torch.no_grad():
        for m in tm.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        for pname, p in tm.named_parameters():
            if p.ndim == 1 and pname.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif p.ndim == 1 or "token" in pname or "pos_embed" in pname:
                p.normal_(0.0, 0.1)
    return tm


def _create_timm(name: str, num_classes: int, size: int):
    import timm

    kw = {"img_size": size} if name.startswith("vit") else {}
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kw)


def _create(name: str, size: int, **kw):
    """The archjax twin of :func:`_create_timm`."""
    if name.startswith("vit"):
        kw["image_size"] = size
    return models.create(name, **kw)


def check_correctness(name: str, size: int, num_classes: int = 1000) -> dict[str, float]:
    """Eval logits of archjax (imported weights) vs timm on the GPU, fp32 and bf16."""
    import torch

    tm = _timm(name, num_classes, size).to(DEVICE).eval()
    variables = models.load_torch_state_dict(name, tm.state_dict())
    x = np.random.default_rng(1).normal(size=(8, size, size, 3)).astype(np.float32)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(DEVICE)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with torch.no_grad():
        ref = tm(xt).float().cpu().numpy()
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            torch_bf16 = tm(xt).float().cpu().numpy()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    out = {}
    for dtype in ("float32", "bfloat16"):
        model = _create(name, size, num_classes=num_classes, dtype=jnp.dtype(dtype))
        with jax.default_matmul_precision("highest" if dtype == "float32" else "default"):
            ours = np.asarray(jax.jit(functools.partial(model.apply, train=False))(variables, x))
        out[dtype] = float(np.abs(ours - ref).max() / np.abs(ref).max())
    out["torch_bfloat16"] = float(np.abs(torch_bf16 - ref).max() / np.abs(ref).max())
    out["ok"] = bool(out["float32"] < 1e-3 and out["bfloat16"] <= 2 * out["torch_bfloat16"] + 1e-3)
    return out


def jax_runner(name: str, size: int, batch: int, num_classes: int, **knobs):
    """The bf16 archjax train step of :mod:`benchmarks.models` at ``size`` px."""
    if name.startswith("vit"):
        knobs["image_size"] = size
    return _jax_runner(name, size, batch, num_classes, "bfloat16", **knobs)[0]


def torch_runner(name: str, size: int, batch: int, num_classes: int, mode: str | None):
    """timm train step in bf16 autocast, channels-last; ``mode``: None = eager, else
    the ``torch.compile`` mode of the model (forward and backward)."""
    import torch

    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    net = _create_timm(name, num_classes, size)
    net = net.train().to(DEVICE).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, fused=True)
    fwd = net if mode is None else torch.compile(net, mode=mode)
    x = torch.randn(batch, 3, size, size, device=DEVICE).to(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch,), device=DEVICE)
    loss_fn = torch.nn.CrossEntropyLoss()

    def run(steps: int) -> None:
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            with torch.autocast(DEVICE, dtype=torch.bfloat16):
                loss = loss_fn(fwd(x), y)
            loss.backward()
            opt.step()
        _sync()

    return run


def _flops(name: str, size: int) -> float:
    """Forward FLOPs per image (multiply-add = 2), XLA's count on the host CPU."""
    with jax.default_device(jax.devices("cpu")[0]):
        return models.count_flops(_create(name, size, num_classes=1000), (1, size, size, 3))


def _timed(run, steps: int) -> float:
    t = time.perf_counter()
    run(steps)
    return time.perf_counter() - t


def bench(runners: dict, steps: int, rounds: int, batch: int) -> dict[str, list[float]]:
    """Images/s per round for each runner, interleaved so machine noise hits all alike."""
    ips = {k: [] for k in runners}
    for r in range(rounds):
        for k, run in runners.items():
            ips[k].append(steps * batch / _timed(run, steps))
        _log(f"  round {r + 1}: " + " | ".join(f"{k} {v[-1]:.0f}" for k, v in ips.items()))
    return ips


def _autotune_subprocess(name, size, batch, steps, rounds, timeout) -> list[float] | None:
    """``max-autotune`` in its own process, so that a compile that runs long is cut off."""
    code = (
        "import json; from benchmarks.gpu_suite import torch_runner, _timed;"
        f"run=torch_runner({name!r},{size},{batch},1000,'max-autotune'); run(2);"
        f"print('IPS', json.dumps([{steps}*{batch}/_timed(run,{steps}) for _ in range({rounds})]))"
    )
    try:
        p = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        _log(f"  max-autotune: not compiled within {timeout:.0f} s; skipped")
        return None
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("IPS ")]
    if p.returncode or not line:
        _log(f"  max-autotune failed (rc {p.returncode}): {p.stderr.strip()[-300:]}")
        return None
    return json.loads(line[0][4:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet50,vit_base_patch16_224")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--vit-attention", default="einsum,cudnn")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for the whole run")
    parser.add_argument("--autotune", default="auto", choices=["auto", "off"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny CPU run of this script: batch 2, one step, one round, no max-autotune",
    )
    args = parser.parse_args()
    import timm
    import torch

    dev = jax.devices()[0]
    global DEVICE
    if args.smoke:
        # The GPU defaults (batch 256) do not fit a CPU's memory or time: the smoke run only
        # checks that every stage of the script runs.
        DEVICE = "cpu"
        args.batch, args.steps, args.rounds, args.autotune = 2, 1, 1, "off"
    elif dev.platform != "gpu" or not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu_suite needs a GPU visible to both jax and torch.")
    _log(
        f"{platform.node()} | {dev.device_kind} | jax {jax.__version__} | torch "
        f"{torch.__version__} | timm {timm.__version__} | batch {args.batch} | "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    )
    ceiling = matmul_ceiling(512 if args.smoke else 8192)
    peak = max(ceiling.values())
    _log(f"bf16 matmul ceiling (8192^3): jax {ceiling['jax']:.0f}, torch {ceiling['torch']:.0f} "
         f"TFLOP/s; MFU below is against {peak:.0f}")  # fmt: skip
    results = {"device": dev.device_kind, "ceiling_tflops": ceiling, "models": {}}
    names = args.models.split(",")
    for i, name in enumerate(names):
        size = args.size
        check = check_correctness(name, size)
        _log(
            f"{name}: logits vs timm fp32 (max err / max |logit|): archjax fp32 "
            f"{check['float32']:.1e}, archjax bf16 {check['bfloat16']:.1e}, timm bf16 "
            f"{check['torch_bfloat16']:.1e} -> {'OK' if check['ok'] else 'MISMATCH'}"
        )
        gflop = 3 * _flops(name, size) / 1e9
        runners = {}
        impls = args.vit_attention.split(",") if name.startswith("vit") else [None]
        for impl in impls:
            t = time.perf_counter()
            knobs = {} if impl is None else {"attention_impl": impl}
            key = "archjax" if impl is None else f"archjax[{impl}]"
            try:
                run = jax_runner(name, size, args.batch, 1000, **knobs)
                run(2)
            except Exception as e:  # one failed variant must not cost the whole GPU call
                _log(f"{name}: {key} failed: {type(e).__name__}: {str(e)[:300]}")
                continue
            runners[key] = run
            _log(f"{name}: {key} compiled + 2 steps in {time.perf_counter() - t:.1f} s")
        for key, mode in (("timm eager", None), ("timm compile", "default")):
            t = time.perf_counter()
            run = torch_runner(name, size, args.batch, 1000, mode)
            run(2)
            runners[key] = run
            _log(f"{name}: {key} warm-up (incl. compile) {time.perf_counter() - t:.1f} s")
        ips = bench(runners, args.steps, args.rounds, args.batch)
        left = args.budget - _elapsed() - 60 * (len(names) - 1 - i)
        if args.autotune == "auto" and left > 150:
            del runners
            torch.cuda.empty_cache()
            ips_at = _autotune_subprocess(name, size, args.batch, args.steps, 3, left - 30)
            if ips_at:
                ips["timm max-autotune"] = ips_at
        med = {k: statistics.median(v) for k, v in ips.items()}
        best_torch = max(v for k, v in med.items() if k.startswith("timm"))
        results["models"][name] = {"check": check, "gflop_per_image": gflop, "ips": ips}
        print(f"\n{name} @{size}px, batch {args.batch}, bf16, {gflop:.1f} GFLOP/img/step")
        print("| runner | img/s per round | median | vs timm compile | vs best timm | MFU |")
        print("|---|---|---|---|---|---|")
        for k, v in ips.items():
            print(
                f"| {k} | {' / '.join(f'{x:.0f}' for x in v)} | {med[k]:.0f} | "
                f"{med[k] / med['timm compile']:.2f}x | {med[k] / best_torch:.2f}x | "
                f"{med[k] * gflop / 1e3 / peak:.1%} |"
            )
        print(flush=True)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "gpu_suite.json"), "w") as f:
            json.dump(results, f, indent=1)
    _log("done")


if __name__ == "__main__":
    main()
