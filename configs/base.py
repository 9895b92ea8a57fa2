"""Defaults every config starts from; each field is described in the README."""
import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0  # parameters, dropout and the data order all follow from it
    config.task = "classification"  # classification | regression | binary_regression
    config.model = ml_collections.ConfigDict({"name": "mlp"})  # other fields go to the constructor
    config.dataset = ml_collections.ConfigDict({"name": "mnist", "data_dir": "", "tfds_data_dir": ""})

    config.parallelism = "jit"  # jit (one program over a device mesh) | pmap
    # fused: the training split in device memory, many steps a call; per_step: a call per batch
    # from the host. auto: fused when the split fits, but per_step for convolutions on the CPU.
    config.steps = "auto"
    config.dtype = "float32"  # computation: float32 | bfloat16 (parameters stay float32)

    config.batch_size = 128  # global: split over all devices of all processes
    config.eval_batch_size = 1000  # global, like batch_size
    config.num_epochs = 10
    config.num_steps = 0  # > 0: train this many steps instead of num_epochs

    config.optimizer = ml_collections.ConfigDict(dict(
        name="adam",  # sgd | adam | adamw
        learning_rate=1e-3,
        momentum=0.0,  # sgd
        nesterov=False,  # sgd
        b1=0.9,  # adam, adamw
        b2=0.999,  # adam, adamw
        weight_decay=0.0,  # decoupled for adamw, added to the gradient otherwise
        grad_clip_norm=0.0,  # > 0: clip gradients to this global norm
        schedule="constant",  # constant | cosine | warmup_cosine | step
        warmup_steps=0,  # warmup_cosine
        decay_every_epochs=1,  # step
        decay_rate=1.0,  # step: the factor applied every decay_every_epochs
    ))

    config.log_every_steps = 100
    config.eval_every_epochs = 1  # 0: not by epochs
    config.eval_every_steps = 0  # > 0: also every this many steps
    config.checkpoint_every_steps = 1000  # and always at the end
    config.keep_checkpoints = 3
    config.plots = True  # PNG figures in the workdir at the end (also: scripts/plot.py)
    config.resume = True  # False: start afresh in a new subfolder of a workdir that has checkpoints
    config.nonfinite = "stop"  # a NaN or Inf in loss or gradients: "stop" the run, or "skip" the update
    return config
