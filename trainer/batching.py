"""Batches from in-memory splits. The training order is a function of (seed, epoch) alone, so a
resumed run sees exactly the batches the uninterrupted run would have seen."""
import jax
import numpy as np


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    key = jax.random.fold_in(jax.random.PRNGKey(seed), epoch)
    return np.asarray(jax.random.permutation(key, num_examples))


def take(split, indices):
    return {name: array[indices] for name, array in split.items()}


def eval_batches(split, batch_size):
    """Every example exactly once; the last batch is padded to full size and masked."""
    num_examples = len(split["targets"])
    for start in range(0, num_examples, batch_size):
        indices = np.arange(start, start + batch_size)
        batch = take(split, np.minimum(indices, num_examples - 1))
        batch["mask"] = indices < num_examples
        yield batch
