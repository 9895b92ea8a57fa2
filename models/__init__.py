"""Models: a Module in each module of this package, linen (cnn, mlp) or NNX (nnx_cnn), exposed as
`Model`, found by name (trainer/parts.py).

Any linen or NNX module written elsewhere works too ('my_models:CNN'): trainer/model.py says how
the trainer builds and calls each (docs/models.md).
"""
