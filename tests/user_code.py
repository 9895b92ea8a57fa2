"""Code a user keeps outside the checkout, written by the tests into a folder on PYTHONPATH: models
as the Flax examples write them, a data set, a task, a metric writer and a config file."""
import textwrap

FILES = {
    "my_data.py": """
        import jax.numpy as jnp
        import numpy as np
        from datasets import Dataset

        def load(num_train=256, num_test=64, size=8, seed=0):
            '''Small NHWC images; the label is the brightest quadrant.'''
            rng = np.random.default_rng(seed)

            def split(n):
                images = rng.integers(0, 100, (n, size, size, 1)).astype(np.uint8)
                labels = rng.integers(0, 4, n).astype(np.int32)
                half = size // 2
                for image, label in zip(images, labels):
                    row, column = divmod(int(label), 2)
                    image[row * half:(row + 1) * half, column * half:(column + 1) * half] += 120
                return {"inputs": images, "targets": labels}

            return Dataset(train=split(num_train), test=split(num_test),
                           prepare_inputs=lambda x: x.astype(jnp.float32) / 255)
    """,
    "my_models.py": """
        import flax.linen as nn
        import jax.numpy as jnp

        class CNN(nn.Module):
            '''As in the Flax MNIST example: __call__ takes no train argument.'''
            @nn.compact
            def __call__(self, x):
                x = nn.avg_pool(nn.relu(nn.Conv(32, (3, 3))(x)), (2, 2), strides=(2, 2))
                x = nn.avg_pool(nn.relu(nn.Conv(64, (3, 3))(x)), (2, 2), strides=(2, 2))
                x = nn.relu(nn.Dense(256)(x.reshape((x.shape[0], -1))))
                return nn.Dense(10)(x)

        class DropoutMLP(nn.Module):
            hidden: int = 64
            rate: float = 0.2

            @nn.compact
            def __call__(self, x, deterministic: bool = True):
                x = nn.relu(nn.Dense(self.hidden)(x.reshape((x.shape[0], -1))))
                return nn.Dense(4)(nn.Dropout(self.rate, deterministic=deterministic)(x))

        class CountingMLP(nn.Module):
            '''Keeps state of its own besides parameters: how many training calls it has seen.'''
            @nn.compact
            def __call__(self, x, training: bool = False):
                calls = self.variable("counters", "training_calls", lambda: jnp.zeros((), jnp.int32))
                if training:
                    calls.value += 1
                return nn.Dense(4)(nn.relu(nn.Dense(32)(x.reshape((x.shape[0], -1)))))
    """,
    "user_nets/__init__.py": "",
    "user_nets/resnet.py": """
        from functools import partial
        from typing import Any, Sequence
        import flax.linen as nn
        import jax.numpy as jnp

        class Block(nn.Module):
            filters: int
            conv: Any
            norm: Any
            strides: tuple = (1, 1)

            @nn.compact
            def __call__(self, x):
                y = nn.relu(self.norm()(self.conv(self.filters, (3, 3), self.strides)(x)))
                y = self.norm(scale_init=nn.initializers.zeros_init())(self.conv(self.filters, (3, 3))(y))
                if x.shape != y.shape:
                    x = self.norm(name="norm_proj")(
                        self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(x))
                return nn.relu(x + y)

        class ResNet(nn.Module):
            '''In the style of the Flax ImageNet example (a 3x3 stem for small images).'''
            stage_sizes: Sequence[int]
            block_cls: Any
            num_classes: int
            num_filters: int = 64
            dtype: Any = jnp.float32

            @nn.compact
            def __call__(self, x, train: bool = True):
                conv = partial(nn.Conv, use_bias=False, dtype=self.dtype)
                norm = partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                               epsilon=1e-5, dtype=self.dtype)
                x = nn.relu(norm(name="bn_init")(conv(self.num_filters, (3, 3), name="conv_init")(x)))
                for i, size in enumerate(self.stage_sizes):
                    for j in range(size):
                        strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                        x = self.block_cls(self.num_filters * 2 ** i, conv=conv, norm=norm,
                                           strides=strides)(x)
                return nn.Dense(self.num_classes, dtype=self.dtype)(jnp.mean(x, axis=(1, 2)))

        ResNet18 = partial(ResNet, stage_sizes=[2, 2, 2, 2], block_cls=Block)
        ResNet10 = partial(ResNet, stage_sizes=[1, 1, 1, 1], block_cls=Block)
    """,
    "my_tasks.py": """
        import jax
        import jax.numpy as jnp
        import optax
        from trainer.tasks import Task

        def top2(logits, labels):
            return (jnp.argsort(logits, -1)[:, -2:] == labels[:, None]).any(-1).astype(jnp.float32)

        def smoothed_cross_entropy(logits, labels):
            targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), 0.1)
            return optax.softmax_cross_entropy(logits, targets)

        smoothed = Task(loss=smoothed_cross_entropy, predict=lambda logits: logits.argmax(-1),
                        classes=True, metrics={"top2": top2})
    """,
    "my_writers.py": """
        import os

        class Lines:
            '''A line per call, in the workdir.'''
            def __init__(self, workdir, start_step):
                self.file = open(os.path.join(workdir, "lines.txt"), "a")
                self.file.write(f"start {start_step}\\n")

            def write_scalars(self, step, scalars):
                self.file.write(f"{step} {' '.join(sorted(scalars))}\\n")

            def write_text(self, step, tag, text):
                self.file.write(f"{step} text {tag}\\n")

            def close(self):
                self.file.close()

        class NoText:
            def __init__(self, workdir):
                pass

            def write_scalars(self, step, scalars):
                pass

            def close(self):
                pass
    """,
    "user_config.py": """
        import ml_collections
        from configs.base import get_base_config

        def get_config(variant="cnn"):
            '''--config=user_config.py:VARIANT'''
            config = get_base_config()
            config.dataset = ml_collections.ConfigDict(dict(name="my_data", num_train=256))
            config.batch_size, config.eval_batch_size = 32, 64
            config.num_steps, config.log_every_steps, config.checkpoint_every_steps = 8, 4, 4
            config.eval_every_epochs, config.plots = 0, False
            config.optimizer.learning_rate = 3e-3
            models = {"cnn": dict(name="my_models:CNN"),
                      "deterministic": dict(name="my_models:DropoutMLP", hidden=64),
                      "resnet": dict(name="user_nets.resnet:ResNet10", num_classes=4, num_filters=4),
                      "counter": dict(name="my_models:CountingMLP"),
                      "bad_model_field": dict(name="my_models:DropoutMLP", hiden=64),
                      "bad_partial_field": dict(name="user_nets.resnet:ResNet18", num_classes=4,
                                                stage_size=(1,))}
            config.model = ml_collections.ConfigDict(models.get(variant, models["cnn"]))
            if variant == "cnn":
                config.task = "my_tasks:smoothed"
                config.writers = ("jsonl", "my_writers:Lines")
                config.optimizer.name, config.optimizer.b1 = "lamb", 0.9
            if variant == "bad_dataset_field":
                config.dataset.num_trian = 5
            if variant == "bad_optimizer_argument":
                config.optimizer.name, config.optimizer.b3 = "lamb", 0.5
            if variant == "writer_without_write_text":
                config.writers = ("jsonl", "my_writers:NoText")
            return config
    """,
}


def write(folder, files=None):
    """Writes `files` ({path: source}; default FILES) into `folder`, as a user keeps them."""
    for name, text in (FILES if files is None else files).items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return folder
