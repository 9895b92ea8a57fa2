"""One generic trainer for Flax linen models: `train_and_evaluate(config, workdir)`."""
