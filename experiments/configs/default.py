r"""The main job: a CIFAR-style ResNet-20 on scikit-learn's digits (no network needed).

Every key an experiment may set is defined here; other configs start from this
one and change values, so a misspelt key is caught (see experiments/train.py).

Run it (the README's first command does exactly this):

  python -m experiments.train
  python -m experiments.train --config=experiments/configs/default.py \
      --workdir=runs/digits_wide --config.model_kwargs.width_multiplier=2.0
  python -m experiments.train --config=experiments/configs/default.py:model=resnet32 \
      --config.num_steps=800

Any key is overridden with `--config.<key>=<value>`. The one declared argument
of `get_config(arg)` is `model` (a name from archjax.models.list_models()); the
default workdir is named after it (`runs/default_modelresnet32`).
"""

import ml_collections

from experiments import config_utils


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the default config; ``arg``: "model=<name>" (see the module docstring)."""
    args = config_utils.parse_arg(arg, model="resnet20")
    c = ml_collections.ConfigDict()
    c.seed = 0

    # Data: a name from archjax.data.list_datasets() ("digits", "shapes", "tfds:<name>").
    c.dataset = "digits"
    c.dataset_kwargs = ml_collections.ConfigDict()  # e.g. {"num_examples": 10000} for shapes
    c.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS data_dir
    c.image_size = 16
    c.random_crop_pad = 1  # pixels of zero padding before a random crop (0 = off)
    c.random_flip = False  # digits are not mirror symmetric

    # Model: a name from archjax.models.list_models(); knobs go to models.create().
    c.model = args.model
    c.model_kwargs = ml_collections.ConfigDict()  # e.g. {"width_multiplier": 2.0}

    # Optimisation.
    c.batch_size = 128  # global; must be divisible by the number of devices
    c.num_steps = 300
    c.optimizer = "sgd"  # a name from archjax.optim.list_optimizers()
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.nesterov = True
    c.weight_decay = 5e-4
    c.warmup_steps = 15
    c.label_smoothing = 0.1
    # Recipe pieces (archjax.optim / archjax.train.recipe); defaults leave them off.
    c.schedule = "cosine"  # a name from archjax.optim.list_schedules()
    c.lr_scaling = "none"  # "linear" / "sqrt": scale learning_rate by batch_size / base_batch_size
    c.base_batch_size = 128  # the batch size that learning_rate and warmup_steps were tuned at
    c.optimizer_state_bits = 32  # 32, 8 or 4 (block-wise quantized moments)
    c.agc_clipping = 0.0  # adaptive gradient clipping ratio, classifier skipped (0 = off)
    c.spike_clipping = False  # Stable-SPAM spike-aware clipping before the optimizer
    c.ema_decay = 0.0  # EMA of parameters, used for evaluation (0 = off)
    c.ema_warmup = True
    # Skip updates whose gradients are not finite, up to this many in a row (0 = off;
    # optax.apply_if_finite); logged as skipped_updates.
    c.skip_nonfinite_updates = 0
    c.sam_rho = 0.0  # sharpness-aware minimization radius (0 = off)
    c.sam_groups = 1  # m-sharpness: perturbations per batch (= data devices for per-device SAM)
    c.microbatches = 1  # gradient accumulation: micro-batches per step
    c.precision = "fp32"  # "fp32" or "bf16" (bf16 compute, fp32 master weights)
    c.mixup_alpha = 0.0  # Beta(alpha, alpha) mixing weights (0 = off)
    c.cutmix_alpha = 0.0  # with both > 0, each batch uses one of them at random
    c.randaugment_layers = 0  # RandAugment ops per image (0 = off)
    c.randaugment_magnitude = 9  # 0..30 (ResNet-RS uses 10-15)
    c.drop_path_rate = ml_collections.config_dict.placeholder(float)  # None = model default
    c.dropout_rate = ml_collections.config_dict.placeholder(float)  # None = model default

    # Sparsity (archjax.sparsity; experiments/pruning.py): a mask kept in the optimizer
    # state, pruned weights held at exactly 0. method "none" = off (a dense run).
    c.sparsity = ml_collections.ConfigDict(
        {
            # "none", "magnitude" (global), "layer_magnitude", "random", "snip", "n_m".
            "method": "none",
            "target": 0.0,  # fraction of the prunable weights removed, in [0, 1)
            # "one_shot" (at begin_step) or "gradual" (Zhu & Gupta cubic, begin..end_step).
            "schedule": "one_shot",
            "begin_step": 0,
            "end_step": 0,
            "frequency": 10,  # gradual: steps between mask updates
            "distribution": "uniform",  # layer ratios of layer_magnitude / random: or "erk"
            "prune_first": False,  # the stem / first conv is kept dense unless True
            "prune_last": False,  # the classifier head is kept dense unless True
            "n": 2,  # n_m: n kept of every m consecutive inputs
            "m": 4,
            # Keep the state of this step in <workdir>/rewind (for IMP rounds that follow).
            "rewind_step": ml_collections.config_dict.placeholder(int),
            # IMP round: the previous round's workdir; prune its final weights to target.
            "imp_from": ml_collections.config_dict.placeholder(str),
            # With imp_from: "weights" (to its rewind_step), "lr" (final weights, step-k
            # optimizer state and schedule), "reinit" (same mask, a fresh init: the control).
            "rewind": "weights",
        }
    )

    # Parallelism: devices on the data axis (None = all).
    c.num_devices = ml_collections.config_dict.placeholder(int)
    # Mesh axis sizes (one may be -1 = the rest): data parallel, FSDP, tensor parallel.
    # See docs/distributed.md; the rules are archjax.parallel.ShardingRules.
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "model": 1})
    # Multi-process runs (jax.distributed); unset values come from JAX_COORDINATOR_ADDRESS,
    # JAX_NUM_PROCESSES, JAX_PROCESS_ID; auto_detect for TPU VM slices and SLURM.
    c.distributed = ml_collections.ConfigDict(
        {
            "coordinator_address": ml_collections.config_dict.placeholder(str),
            "num_processes": ml_collections.config_dict.placeholder(int),
            "process_id": ml_collections.config_dict.placeholder(int),
            "auto_detect": False,
        }
    )

    # Logging, evaluation, checkpoints (in steps).
    c.log_every = 25
    c.eval_every = 100
    c.eval_batch_size = 256
    c.checkpoint_every = 100
    c.keep_checkpoints = 3
    c.keep_best_checkpoints = 0  # also keep this many best by test accuracy
    c.async_checkpoints = True  # write in the background; the loop waits only for the copy

    # JAX's persistent compilation cache (archjax.compile_cache): None = the user's cache
    # dir ($XDG_CACHE_HOME or ~/.cache)/archjax/jax_cache, "" = off, or a path.
    c.compilation_cache_dir = ml_collections.config_dict.placeholder(str)

    return c
