"""MNIST CNN with BatchNorm: Conv32-BN-ReLU-avgpool, Conv64-BN-ReLU-avgpool, Dense256, Dense10.

    python scripts/train.py --config=configs/mnist_cnn.py --workdir=runs/mnist_cnn \
        --config.dataset.data_dir=../shared/data/mnist

Adam 1e-3, batch 128, 10 epochs, the learning rate decayed to 0 by a cosine: with a constant
1e-3 the final accuracy swung between 98.7 % and 99.2 % across seeds; with the cosine it is stable.
A tenth of train (6,000 images) is held out as a validation split, which chooses the checkpoint
(configs/base.py: chosen_on_validation).
Reaches: 99.32 % test accuracy on the checkpoint validation chose (step 4210, validation 99.27 %)
in 282 s, whole command, on the 2-core CPU of the project's machines (seed 0, 2026-12-05; before
the validation split, trained on all 60,000: 99.35 % in 233 s, 2026-12-03).
"""
import ml_collections

from configs.base import chosen_on_validation, get_base_config


def get_config():
    config = chosen_on_validation(get_base_config())
    config.model = ml_collections.ConfigDict(dict(
        name="cnn", conv_features=(32, 64), kernel_size=3, batch_norm=True, pool="avg",
        dense_features=(256,), num_classes=10, dropout_rate=0.0))
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.schedule = "cosine"
    config.num_epochs = 10
    return config
