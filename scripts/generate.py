"""Writes text with a trained language model: the continuation of each prompt, printed.

    python scripts/generate.py --workdir=runs/shakespeare --prompt="**HAMLET.**"
    python scripts/generate.py --workdir=runs/shakespeare --prompt="To be" --prompt="O Romeo" \
        --max_new_tokens=400 --temperature=0.8 --top_k=40 --seed=1 --step=best

Greedy with --temperature=0; the same --seed gives the same text (trainer/generation.py). A
prompt's `\\n` is a new line.
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout first

from absl import flags  # pylint: disable=wrong-import-position

from trainer import api, cli  # pylint: disable=wrong-import-position

WORKDIR, STEP, EMA = cli.define_run_flags()
PROMPTS = flags.DEFINE_multi_string("prompt", None, "Text to continue; repeat for several.",
                                    required=True)
MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 300, "Tokens to write after each prompt "
                                      "(fewer where a document ends).")
TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "Sampling temperature; 0: greedy.")
TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0: all).")
TOP_P = flags.DEFINE_float("top_p", 1.0, "Sample among the most likely tokens holding this "
                           "share of the probability.")
SEED = flags.DEFINE_integer("seed", 0, "The sampling seed.")


def main(argv):
    del argv
    run = api.load(WORKDIR.value, STEP.value, config=cli.config())
    prompts = [prompt.replace("\\n", "\n") for prompt in PROMPTS.value]
    texts = run.generate(prompts, MAX_NEW_TOKENS.value, temperature=TEMPERATURE.value,
                         top_k=TOP_K.value, top_p=TOP_P.value, seed=SEED.value, ema=EMA.value)
    print("\n\n".join(prompt + text for prompt, text in zip(prompts, texts)))


if __name__ == "__main__":
    cli.run(main, config_required=False, reads_a_run=True)
