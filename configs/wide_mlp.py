"""A wide MNIST MLP, 784-4096x7-10: 104 M parameters, 1.25 GB of parameters and Adam state, with
them sharded over every device (fully sharded data parallel, docs/devices.md).

    python scripts/train.py --config=configs/wide_mlp.py --workdir=runs/wide_mlp \
        --config.dataset.data_dir=../shared/data/mnist

Each device holds 1/N of the parameters and optimizer state. It is the benchmark's model for
sharding (scripts/benchmark.py --sections=fsdp), where data parallel's copy of the whole state
on each device is set beside it; on one device it is a plain (large) MLP.
"""
import ml_collections

from configs.base import get_base_config


def get_config():
    config = get_base_config()
    config.model = ml_collections.ConfigDict(dict(
        name="mlp", features=(4096,) * 7 + (10,), activation="relu"))
    config.mesh.data, config.mesh.fsdp = 1, -1  # every device on the fsdp axis
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-4
    config.num_epochs = 1
    return config
