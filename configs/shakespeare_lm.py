"""A byte-level transformer language model on Shakespeare's 38 plays, nanoGPT's CPU recipe.

    python scripts/train.py --config=configs/shakespeare_lm.py --workdir=runs/shakespeare \
        --config.dataset.path=../shared/data/shakespeare
    python scripts/generate.py --workdir=runs/shakespeare --prompt="**HAMLET**  "

The plays' Markdown split into their 761 scenes and each play's title page (799 documents); a
tenth of the documents held out for validation and a twentieth for test, whole.
Bytes as tokens (no tokenizer to train), packed into rows of 64 (concatenate and split: a row
holds the end of one scene and the start of the next, attention and targets never crossing).
The model and recipe are nanoGPT's for a CPU (4 layers, 4 heads, width 128, context 64, batch
12, 2,000 steps, no dropout; AdamW 1e-3 warmed up over 100 steps and decayed by a cosine to
1e-4, betas 0.9/0.99, weight decay 0.1, gradients clipped to norm 1), which reaches 1.88
validation loss per character on nanoGPT's own Shakespeare text.
Reaches: validation loss 1.661 a byte (2.397 bits a byte; test 1.664) at step 2000, about 18,300
tokens/s, 134 s whole command, on the 2-core CPU of the project's machines (seed 0, 2026-12-06).
At step 2000 it wrote, after "**ROMEO**  \n" at temperature 0.8 (a byte that is no UTF-8 shown
as �; the README has the sample):
"""
import ml_collections
from ml_collections.config_dict import placeholder

from configs.base import get_base_config


def get_config():
    config = get_base_config()
    config.task = "language_model"
    config.dataset = ml_collections.ConfigDict(dict(
        name="text", path=placeholder(str), split_at=r"^### SCENE", seq_len=64,
        tokenizer="bytes", vocab_size=placeholder(int), packing="concat",
        validation_fraction=0.1, test_fraction=0.05, seed=0))
    config.model = ml_collections.ConfigDict(dict(
        name="transformer", vocab_size=257, num_layers=4, num_heads=4, embed_dim=128,
        max_len=64, dropout_rate=0.0, tie_embeddings=False))
    config.batch_size = 12
    config.num_steps = 2000
    config.eval_batch_size = 1000
    config.optimizer = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=1e-3, end_learning_rate=1e-4, schedule="warmup_cosine",
        warmup_steps=100, b1=0.9, b2=0.99, weight_decay=0.1, grad_clip_norm=1.0,
        decay_every_epochs=1, decay_rate=1.0, momentum=placeholder(float),
        nesterov=placeholder(bool), frozen=""))
    # The validation documents every 500 steps choose the checkpoint; the test ones report it.
    config.evals = ml_collections.ConfigDict(dict(
        val=dict(split="validation", every_steps=500, every_epochs=0, max_examples=0,
                 metrics=placeholder(tuple)),
        test=dict(split="test", every_steps=0, every_epochs=0, max_examples=0,
                  metrics=placeholder(tuple))))
    config.best_metric = "val/loss"
    config.log_every_steps = 100
    # Text the model writes at each evaluation (console, TensorBoard, metrics.jsonl).
    config.samples = ml_collections.ConfigDict(dict(
        prompts=("**ROMEO**  \n",), max_new_tokens=200, temperature=0.8, top_k=0, top_p=1.0))
    return config
