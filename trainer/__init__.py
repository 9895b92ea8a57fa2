"""One generic trainer for Flax models, linen or NNX.

From Python: `from trainer import api`; `api.fit(config, workdir, ...)` trains and returns a Run,
`api.load(workdir)` reads one back (trainer/api.py). The command line (scripts/train.py) is a thin
layer over the same. This file imports nothing: the pipeline's worker processes import
trainer.input_pipeline without JAX.
"""
