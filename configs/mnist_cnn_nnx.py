"""configs/mnist_cnn.py with the same CNN written in Flax NNX (models/nnx_cnn.py): the same
layers, optimizer, schedule and epochs.

    python scripts/train.py --config=configs/mnist_cnn_nnx.py --workdir=runs/mnist_cnn_nnx \
        --config.dataset.data_dir=../shared/data/mnist

Reaches: (measured below, this session)
"""
from configs import mnist_cnn


def get_config():
    config = mnist_cnn.get_config()
    config.model.name = "nnx_cnn"
    config.model.image_shape = (28, 28, 1)
    return config
