"""Models: a Module in each module of this package, linen (cnn, mlp, transformer) or NNX (nnx_cnn,
nnx_transformer), exposed as `Model`, found by name (trainer/parts.py); remat.py holds what
config.remat means to them.

Any linen or NNX module written elsewhere works too ('my_models:CNN'): trainer/model.py says how
the trainer builds and calls each (docs/models.md).
"""
