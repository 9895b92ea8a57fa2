"""Text from a trained language model: prompts -> tokens -> a jitted decode loop -> text.

The loop runs on the device (`jax.lax.while_loop`, one token a turn) over the model's key-value
cache where it keeps one (its `init_cache`, models/transformer.py): the prompt is run once
(prefill), then each new token alone. A sequence model without a cache is run over the whole
window each turn instead: slower, the same tokens. Prompts of different lengths share a batch
left-padded, the padding in segment 0, which attention never reads (positions start at each
prompt's first token). Decoding is greedy at temperature 0, else sampled from the softmax at
that temperature, within the `top_k` most likely tokens and the smallest set holding `top_p` of
the probability; a row stops at the end-of-document token. The same seed gives the same text.

A window of `context` tokens at most (the sequence length the model was trained on): text that
would outgrow it goes on from its last `context // 2` tokens, re-read as a new prompt.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

import datasets
from trainer.errors import ConfigError
from trainer.model import empty_cache


def filtered_logits(logits, temperature, top_k, top_p):
    """Logits scaled by the temperature, those outside top_k and top_p set to -inf."""
    logits = logits.astype(jnp.float32) / temperature
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        ordered = jnp.sort(logits, axis=-1)[..., ::-1]
        probabilities = jax.nn.softmax(ordered, axis=-1)
        # The smallest set holding top_p: each token whose more likely ones hold less than it.
        before = jnp.cumsum(probabilities, axis=-1) - probabilities
        cutoff = jnp.min(jnp.where(before < top_p, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return logits


def choose(logits, key, temperature, top_k, top_p):
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, filtered_logits(logits, temperature, top_k, top_p),
                                  axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "steps", "temperature", "top_k", "top_p",
                                             "eod_id"))
def decode(model, params, model_state, tokens, real, key, *, steps, temperature, top_k, top_p,
           eod_id):
    """`steps` new tokens (or fewer, once every row ended) after the left-padded prompts
    `tokens` (batch, length) whose real tokens are where `real`; returns (batch, steps) int32,
    eod_id after a row's end."""
    batch, length = tokens.shape
    segment_ids = real.astype(jnp.int32)
    positions = jnp.maximum(jnp.cumsum(segment_ids, axis=1) - 1, 0)
    lengths = segment_ids.sum(axis=1)
    cache = empty_cache(model, batch, length + steps)

    def forward(inputs):
        return model.apply(params, model_state, inputs, False)[0]

    if cache is not None:
        logits, cache = forward(dict(tokens=tokens, segment_ids=segment_ids, positions=positions,
                                     cache=cache))
    else:  # the whole window each turn, its unwritten slots in segment 0
        window = jnp.zeros((batch, length + steps), jnp.int32).at[:, :length].set(tokens)
        window_segments = jnp.zeros_like(window).at[:, :length].set(segment_ids)
        window_positions = jnp.zeros_like(window).at[:, :length].set(positions)
        logits = forward(dict(tokens=window, segment_ids=window_segments,
                              positions=window_positions))[:, :length]
        cache = (window, window_segments, window_positions)
    out = jnp.full((batch, steps), eod_id, jnp.int32)
    done = jnp.zeros((batch,), bool)

    def turn(carry):
        i, last_logits, cache, out, done = carry
        token = choose(last_logits, jax.random.fold_in(key, i), temperature, top_k, top_p)
        token = jnp.where(done, eod_id, token)
        out = out.at[:, i].set(token)
        done = done | (token == eod_id)
        position = lengths + i
        if isinstance(cache, dict):
            logits, cache = forward(dict(tokens=token[:, None], segment_ids=jnp.ones_like(
                token)[:, None], positions=position[:, None], cache=cache))
            logits = logits[:, -1]
        else:
            window, window_segments, window_positions = cache
            slot = length + i
            window = window.at[:, slot].set(token)
            window_segments = window_segments.at[:, slot].set(1)
            window_positions = window_positions.at[:, slot].set(position)
            cache = (window, window_segments, window_positions)
            logits = jnp.take(forward(dict(tokens=window, segment_ids=window_segments,
                                           positions=window_positions)), slot, axis=1)
        return i + 1, logits, cache, out, done

    def going(carry):
        i, _, _, _, done = carry
        return (i < steps) & ~jnp.all(done)

    carry = (jnp.int32(0), logits[:, -1], cache, out, done)
    return jax.lax.while_loop(going, turn, carry)[3]


def left_padded(rows, length):
    """Token rows as (len(rows), length) int32, each at the right end, and where they are real."""
    tokens = np.zeros((len(rows), length), np.int32)
    real = np.zeros((len(rows), length), bool)
    for i, row in enumerate(rows):
        if row:
            tokens[i, -len(row):], real[i, -len(row):] = row, True
    return tokens, real


def generate(model, params, model_state, prompts, *, max_new_tokens, context, eod_id,
             temperature=1.0, top_k=0, top_p=1.0, seed=0):
    """New tokens after each prompt (lists of token ids), as lists without the end-of-document
    token, for `model` (a trainer.model Model) at `params`."""
    check_settings(prompts, max_new_tokens, context, temperature, top_k, top_p)
    texts = [list(p) for p in prompts]
    new = [[] for _ in prompts]
    ended = [False] * len(prompts)
    key, turn = jax.random.PRNGKey(seed), 0
    while not all(ended) and min(len(n) for n in new) < max_new_tokens:
        keep = context if turn == 0 else context // 2  # the prompt, then half a window goes on
        window = [text[-keep:] for text in texts]
        length = max(len(w) for w in window)
        steps = min(context - length, max_new_tokens - len(new[0]))
        tokens, real = left_padded(window, length)
        out = np.asarray(decode(model, params, model_state, tokens, real,
                                jax.random.fold_in(key, turn), steps=steps,
                                temperature=float(temperature), top_k=int(top_k),
                                top_p=float(top_p), eod_id=int(eod_id)))
        for i, row in enumerate(out):
            if ended[i]:
                new[i].extend([eod_id] * steps)  # keeps the rows aligned; cut below
                continue
            row = list(row)
            if eod_id in row:
                row, ended[i] = row[:row.index(eod_id)], True
            new[i].extend(row)
            texts[i].extend(row)
        turn += 1
    return [[t for t in row[:max_new_tokens] if t != eod_id] for row in new]


def check_settings(prompts, max_new_tokens, context, temperature, top_k, top_p):
    longest = max((len(p) for p in prompts), default=0)
    if not prompts or min(len(p) for p in prompts) == 0:
        raise ConfigError("give each prompt at least one character: the model continues a text.")
    if longest > context:
        raise ConfigError(f"a prompt is {longest} tokens long and the model's context is "
                          f"{context}: give a shorter prompt (at most {context} tokens).")
    if not (isinstance(max_new_tokens, int) and max_new_tokens > 0):
        raise ConfigError(f"max_new_tokens={max_new_tokens!r}: give a positive number of tokens.")
    if not temperature >= 0:
        raise ConfigError(f"temperature={temperature}: give 0 (greedy) or more.")
    if not (isinstance(top_k, int) and top_k >= 0):
        raise ConfigError(f"top_k={top_k!r}: give 0 (all tokens) or a positive number.")
    if not 0 < top_p <= 1:
        raise ConfigError(f"top_p={top_p}: give a share in (0, 1].")


def complete(state, dataset, prompts, **settings):
    """The text `state`'s model writes after each prompt (strings), through the data set's
    tokenizer, in a window of the data set's sequence length; `settings`: generate's."""
    tokenizer = dataset.tokenizer
    if tokenizer is None:
        raise ConfigError("generating text needs a run trained on text (datasets/text.py): this "
                          "run's data set has no tokenizer.")
    context = datasets.examples(dataset.train, [0])["inputs"].shape[1]
    new = generate(state.model, state.params, state.model_state,
                   [tokenizer.encode(p) for p in prompts], context=context,
                   eod_id=tokenizer.eod_id, **settings)
    return [tokenizer.decode(tokens) for tokens in new]
