"""One generic trainer for Flax models, linen or NNX.

From Python: `trainer.fit(config, workdir, ...)` trains and returns a Run, `trainer.load(workdir)`
reads one back (trainer/api.py); the command line (scripts/train.py) is a thin layer over the same.
Imported lazily: the pipeline's worker processes import trainer.input_pipeline without JAX.
"""


def __getattr__(name):
    if name in ("fit", "load", "Run"):
        from trainer import api  # pylint: disable=import-outside-toplevel
        return getattr(api, name)
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
