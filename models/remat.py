"""config.remat as the shipped models take it: which activations of a block the backward pass keeps,
the others recomputed from the block's input (jax.checkpoint) to save memory for FLOPs.

    "none"     keep everything (no rematerialisation)
    "full"     keep only each block's input: the block runs twice
    "dots"     keep matrix products without batch dimensions (a Dense layer's outputs); attention
               scores and elementwise work are recomputed
    "offload"  as "dots", but kept in the host's memory rather than the device's
    (names)    keep only the activations of these names, as the model tags them
               (jax.ad_checkpoint.checkpoint_name; each model lists its names in NAMES)

Remat saves memory only where XLA cannot undo it: inside a rolled scan over repeated blocks
(measured on this CPU: per-block remat outside a scan saved nothing, XLA merged the recomputation
back). So the shipped transformer keeps its blocks' parameters stacked whatever config.remat says
(remat changes no parameter, state or checkpoint) and scans over them: rolled under remat, and
unrolled without, where XLA schedules the straight-line blocks better (measured for
configs/shakespeare_lm.py on the 2-core CPU: 19,000 real tokens/s unrolled against 13,500
rolled, 300 against 400 MB of train step temporaries at batch 64; only the evaluation step at
batch 1000 takes more unrolled, 835 against 319 MB). A model's `scan_unroll` field decides
otherwise.
"""
import jax

KEYWORDS = ("none", "full", "dots", "offload")


def check_remat(remat, names, model):
    """ValueError unless `remat` is a keyword or a tuple of `model`'s activation `names`."""
    if isinstance(remat, str):
        if remat not in KEYWORDS:
            raise ValueError(f"remat={remat!r}; use one of {', '.join(KEYWORDS)}, or a tuple of "
                             f"{model}'s activation names: {', '.join(names)}")
        return
    unknown = [name for name in remat if name not in names]
    if unknown or not remat:
        raise ValueError(f"{model} tags no activation named "
                         f"{', '.join(map(repr, unknown)) or '(an empty tuple)'} for remat to "
                         f"keep; its names are {', '.join(names)}")


def unrolled(scan_unroll, remat):
    """Whether a scan over blocks is unrolled: as a model's `scan_unroll` field says, or, where it
    is None, when nothing is rematerialised (see above)."""
    return remat == "none" if scan_unroll is None else scan_unroll


def remat_policy(remat):
    """The jax.checkpoint policy of a `remat` setting (check_remat() passed); None for "none"."""
    policies = jax.checkpoint_policies
    if not isinstance(remat, str):
        return policies.save_only_these_names(*remat)
    return {"none": None, "full": policies.nothing_saveable,
            "dots": policies.dots_with_no_batch_dims_saveable,
            "offload": policies.offload_dot_with_no_batch_dims("device", "pinned_host")}[remat]
