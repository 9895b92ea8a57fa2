"""One generic trainer for Flax models, linen or NNX: `train_and_evaluate(config, workdir)`."""
