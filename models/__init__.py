"""Models: a linen Module in each module of this package, exposed as `Model`, found by name
(trainer/parts.py).

Any linen module written elsewhere works too ('my_models:CNN'): the trainer calls it with `train=`,
`training=`, `deterministic=` or none of them, as its __call__ asks (trainer/state.py).
"""
