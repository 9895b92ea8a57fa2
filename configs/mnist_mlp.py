"""MNIST MLP 784-512-512-10 with ReLU; SGD 1e-2 with momentum 0.9, batch 128, 8 epochs.

    python scripts/train.py --config=configs/mnist_mlp.py --workdir=runs/mnist_mlp \
        --config.dataset.data_dir=../shared/data/mnist

The classic tutorial used plain SGD on 0-255 pixels; on [0, 1] inputs plain SGD 1e-2 reaches
only about 93 % in 8 epochs, so momentum 0.9 is added.
A tenth of train is held out as a validation split, which chooses the checkpoint.
Reaches: 97.55 % test accuracy on the checkpoint validation chose (the last, step 3368;
validation 96.82 %) in 14.0 s, whole command, on the 2-core CPU of the project's machines
(seed 0, 2026-12-05; trained on all 60,000 before: 97.54 % in 13.8 s).
"""
import ml_collections

from configs.base import chosen_on_validation, get_base_config


def get_config():
    config = chosen_on_validation(get_base_config())
    config.model = ml_collections.ConfigDict(dict(
        name="mlp", features=(512, 512, 10), activation="relu", init_gain=0.0))
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 1e-2
    config.optimizer.momentum = 0.9
    config.num_epochs = 8
    return config
