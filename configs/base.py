"""Defaults every config starts from; each field is described in the README."""
import ml_collections
from ml_collections.config_dict import placeholder


def get_base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0  # parameters, dropout and the data order all follow from it
    # Parts are found by name: one that ships, or "module:name" of your own (README, "Your own parts").
    config.task = "classification"  # | regression | binary_regression | language_model
    config.model = ml_collections.ConfigDict({"name": "mlp"})  # other fields go to the constructor
    # A field that is None is not given to the part: its own default applies. These are declared
    # so that the command line can set them (docs/data.md says which data set takes which).
    config.dataset = ml_collections.ConfigDict(dict(
        name="mnist", data_dir=placeholder(str), tfds_data_dir=placeholder(str),
        train_split=placeholder(str), test_split=placeholder(str),
        validation_split=placeholder(str), image_size=placeholder(tuple),
        image_key=placeholder(str), label_key=placeholder(str),
        num_train=placeholder(int), num_test=placeholder(int), seed=placeholder(int)))
    # Streamed splits (TFDS, ArrayRecord, image folders) and augmented ones are read by workers.
    config.pipeline = ml_collections.ConfigDict(dict(
        workers=-1,  # processes that read, decode, augment (-1: a core each but one, at most 8)
        buffer=2,  # batches each worker prepares ahead
    ))
    config.augment = ml_collections.ConfigDict(dict(  # training images, on the host; none by default
        crop_padding=0,  # > 0: pad by this many pixels and crop back at random
        flip=False,  # random horizontal flips
        transform=placeholder(str),  # "module:function" of your own, (example, rng) -> example
        mean=(), std=(),  # per channel, in [0, 1] units: (x - mean) / std on the device
    ))
    config.writers = ("tensorboard", "jsonl")  # where metrics go, besides the console; also "wandb"
    config.wandb = ml_collections.ConfigDict(dict(  # the "wandb" writer (pip install -e ".[wandb]")
        project="flaxfit", entity=placeholder(str), name=placeholder(str)))

    config.parallelism = "jit"  # jit (one program over a device mesh) | pmap (data parallel only)
    # The device mesh (jit): axis sizes, one of them -1 for the devices left. The batch is split
    # over "data" and "fsdp"; parameters and optimizer state over "fsdp" (--config.mesh.fsdp=8) and
    # any axis a sharding rule names. Default: data parallel, the state on every device whole.
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
    # ((regex over parameter paths, spec), ...): first match wins, e.g. (("params/Dense_0/kernel",
    # (None, "model")),); a parameter no rule matches is split over "fsdp" (docs/devices.md).
    config.sharding_rules = ()
    config.fsdp_min_size = 16384  # parameters with fewer elements stay whole on every device
    # fused: the training split in device memory, many steps a call; per_step: a call per batch
    # from the host. auto: fused when the split fits, but per_step for convolutions on the CPU.
    config.steps = "auto"
    # float32 | mixed_bfloat16 (parameters float32, computation bfloat16) | bfloat16 (both) |
    # mixed_float16 (float16 computation, with dynamic loss scaling); losses in float32.
    config.precision = "float32"
    config.dtype = "float32"  # bfloat16: the older name of precision="mixed_bfloat16"
    # What each block keeps for the backward pass, the rest recomputed (memory for FLOPs): none |
    # full | dots | offload | activation names, "attention,mlp_hidden" (models/remat.py).
    config.remat = "none"
    # Before a run: its train step compiled for the devices and refused if it would pass 90 % of
    # a device's memory (docs/devices.md). auto: on accelerators | on: the CPU too | off: never.
    config.memory_check = "auto"

    config.batch_size = 128  # global: split over all devices of all processes
    config.grad_accum_steps = 1  # > 1: each batch in this many microbatches, one update (a scan)
    config.eval_batch_size = 1000  # global, like batch_size
    config.num_epochs = 10
    config.num_steps = 0  # > 0: train this many steps instead of num_epochs

    config.optimizer = ml_collections.ConfigDict(dict(
        name="adam",  # any Optax optimizer: sgd | adam | adamw | lamb | lion | ...
        learning_rate=1e-3,  # peak; the schedule below shapes it
        weight_decay=0.0,  # to optimizers that take it (adamw: decoupled), else added to the gradient
        grad_clip_norm=0.0,  # > 0: clip gradients to this global norm
        schedule="constant",  # constant | cosine | warmup_cosine | step
        warmup_steps=0,  # warmup_cosine
        decay_every_epochs=1,  # step
        decay_rate=1.0,  # step: the factor applied every decay_every_epochs
        # Any other field is a keyword argument of the optimizer; None leaves Optax's default.
        # These few are declared so that the command line can set them.
        momentum=placeholder(float),  # sgd
        nesterov=placeholder(bool),  # sgd
        b1=placeholder(float),  # adam, adamw, lamb, lion, ...
        b2=placeholder(float),
        frozen="",  # a regex over parameter paths ("params/Conv_0/kernel"): those do not train
    ))
    config.ema_decay = 0.0  # in (0, 1): also keep an exponential moving average of the parameters

    # Fine-tuning: start a fresh run from another run's parameters (and BatchNorm statistics).
    config.init_from = ""  # a run's workdir, or one checkpoint's folder (workdir/checkpoints/N)
    config.init_from_regex = ".*"  # which arrays to load, by path ("params/Dense_0/kernel")

    config.log_every_steps = 100
    # A validation split carved from train: `fraction` of its examples, drawn with `seed` from
    # their count alone (0: none; a data set's own validation split needs none).
    config.validation = ml_collections.ConfigDict(dict(fraction=0.0, seed=0))
    # Named evaluations, each {split, every_steps, every_epochs, max_examples, ema, metrics},
    # logged as <name>/<metric> (trainer/evals.py, trainer/metrics.py); see
    # chosen_on_validation below. None given: one evaluation of the test split, by the two fields
    # below, as eval/<metric>.
    config.evals = ml_collections.ConfigDict()
    config.eval_every_epochs = 1  # 0: not by epochs
    config.eval_every_steps = 0  # > 0: also every this many steps
    config.checkpoint_every_steps = 1000  # and always at the end
    config.keep_checkpoints = 3
    # Keep the best checkpoint by an eval metric too ("eval/accuracy"; evaluations then save one).
    config.best_metric = ""
    config.best_mode = "auto"  # max | min | auto (min for a metric named *loss or *error)
    # Selection by an evaluation of the test split is refused; True: it is what the run means.
    config.select_on_test = False
    config.early_stopping = ml_collections.ConfigDict(dict(
        metric="",  # e.g. "eval/loss": stop when it has not improved for `patience` evaluations
        patience=5,
        min_delta=0.0,  # an improvement of this much or less does not count
        mode="auto",  # like best_mode
    ))
    config.plots = True  # PNG figures in the workdir at the end (also: scripts/plot.py)
    config.resume = True  # False: start afresh in a new subfolder of a workdir that has checkpoints
    # A resume whose seed, data, model, task or augmentation differ from the run's record is
    # refused; True resumes with them (config_history.jsonl keeps both: docs/reliability.md).
    config.resume_with_changes = False
    config.nonfinite = "stop"  # a NaN or Inf in loss or gradients: "stop" the run, or "skip" the update
    config.profile_steps = ()  # (start, end): a JAX profiler trace of those steps in workdir/profile
    return config


def chosen_on_validation(config, fraction=0.1):
    """`config` with a validation split of `fraction` of train that chooses the best checkpoint,
    evaluated as `val` every config.eval_every_epochs, and the test split, `test`, evaluated once,
    at the end: results.json's best/test/... are the test figures of the model validation chose."""
    config.validation.fraction = fraction
    # metrics declared, so that a flag can name them (--config.evals.val.metrics=loss,f1); None:
    # the task's own.
    config.evals = ml_collections.ConfigDict(dict(
        val=dict(split="validation", metrics=placeholder(tuple)),
        test=dict(split="test", every_steps=0, every_epochs=0, metrics=placeholder(tuple))))
    config.best_metric = "val/accuracy"
    return config
