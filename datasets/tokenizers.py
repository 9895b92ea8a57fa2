"""Tokenizers for the text data sets: text <-> token ids, with an end-of-document id (EOD).

Each has `encode(text) -> list[int]` (no EOD added), `decode(ids) -> str` (EOD and the other
control ids are dropped, not stopped at: cut at `eod_id` first to stop there; byte sequences that
are not UTF-8 decode with errors="replace"), `vocab_size`, `eod_id`, `token_bytes` (np.int32, one
per id: the UTF-8 bytes the id stands for, 0 for EOD and control ids, so that a loss sums to bits
per byte), `name` (for people) and `digest` (changes whenever the tokenization would change).

  - `Bytes` ("bytes", the default): ids 0..255 are the UTF-8 bytes, 256 is EOD. No training,
    exact round trip.
  - `SentencePiece`: a unigram model trained on the corpus ("sentencepiece", with vocab_size) or a
    user's `.model` file. EOD is its end-of-sequence piece (eos_id). `model_file` is the path of
    the .model, for a run to keep a copy. Trained with TRAINING, it round-trips exactly
    (newlines, runs of spaces, trailing spaces, any Unicode through byte fallback) but for
    U+2581 (▁, its mark for a space), which decodes as a space; a user's model is used as it was
    trained.
"""
import hashlib
import io
import os

import numpy as np

from datasets import DataError

# SentencePiece settings for an exact round trip: no normalization (the defaults fold Unicode and
# turn newlines into spaces), spaces kept as they are (not squeezed, no space added in front, so
# a token's bytes are its piece's bytes), unknown characters as UTF-8 bytes. Training is
# deterministic for a fixed thread count, and the pieces depend on it: fixed, not the machine's.
TRAINING = dict(model_type="unigram", normalization_rule_name="identity",
                remove_extra_whitespaces=False, add_dummy_prefix=False, byte_fallback=True,
                num_threads=16)


class Bytes:
    """UTF-8 bytes as ids 0..255, and 256 for the end of a document."""
    name = digest = "bytes"
    vocab_size = 257
    eod_id = 256
    model_file = None

    def __init__(self):
        self.token_bytes = np.array([1] * 256 + [0], np.int32)

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(int(i) for i in ids if i != self.eod_id).decode("utf-8", errors="replace")


class SentencePiece:
    """A SentencePiece model, from the bytes of its .model file (kept for pickling: the
    processor itself is rebuilt from them)."""

    def __init__(self, model_proto: bytes, model_file: str):
        self.model_proto, self.model_file = model_proto, model_file
        self.digest = hashlib.sha256(model_proto).hexdigest()
        self._load()

    def _load(self):
        spm = import_sentencepiece()
        self._processor = spm.SentencePieceProcessor(model_proto=self.model_proto)
        self.vocab_size = self._processor.vocab_size()
        self.eod_id = self._processor.eos_id()
        self.name = f"sentencepiece-{self.vocab_size}-{self.digest[:8]}"
        self.token_bytes = np.array([piece_bytes(self._processor, i)
                                     for i in range(self.vocab_size)], np.int32)

    def __getstate__(self):
        return {"model_proto": self.model_proto, "model_file": self.model_file}

    def __setstate__(self, state):
        self.__init__(state["model_proto"], state["model_file"])

    def encode(self, text):
        return self._processor.encode(text)

    def decode(self, ids):
        return self._processor.decode([int(i) for i in ids])


def piece_bytes(processor, i):
    if processor.is_control(i) or processor.is_unknown(i) or processor.is_unused(i):
        return 0
    if processor.is_byte(i):
        return 1
    return len(processor.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))


def import_sentencepiece():
    try:
        import sentencepiece  # pylint: disable=g-import-not-at-top
    except ImportError as e:
        raise DataError("the SentencePiece tokenizer needs the sentencepiece package: "
                        "pip install sentencepiece (or use tokenizer='bytes').") from e
    return sentencepiece


def load_model(path):
    """A SentencePiece tokenizer from a .model file."""
    try:
        with open(path, "rb") as f:
            proto = f.read()
    except OSError as e:
        raise DataError(f"cannot read the SentencePiece model {path}: {e.strerror}. "
                        f"Check config.dataset.tokenizer.") from e
    import_sentencepiece()
    try:
        tokenizer = SentencePiece(proto, os.path.abspath(path))
    except (RuntimeError, OSError) as e:
        raise DataError(f"{path} is not a SentencePiece model (it does not load). Give the "
                        f".model file that SentencePiece training wrote.") from e
    if tokenizer.eod_id < 0:
        raise DataError(f"the SentencePiece model {path} has no end-of-sequence piece (eos_id "
                        f"-1), which marks the end of each document. Train it with eos_id set.")
    return tokenizer


def train(texts, vocab_size, model_file):
    """Trains a SentencePiece model on `texts` (one sentence each: a whole document, so that
    pieces can hold newlines) and writes it to `model_file` atomically."""
    spm = import_sentencepiece()
    # Longer sentences would be skipped without a word.
    longest = max(len(t.encode("utf-8")) for t in texts)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=model,
                                       vocab_size=vocab_size, minloglevel=2,
                                       max_sentence_length=max(longest, 4192), **TRAINING)
    except RuntimeError as e:
        reason = " ".join(str(e).split())
        raise DataError(f"SentencePiece training with vocab_size={vocab_size} failed: {reason}. "
                        f"Change config.dataset.vocab_size.") from e
    write_atomically(model_file, model.getvalue())


def write_atomically(path, data: bytes):
    """Writes through a temporary file in the same folder and os.replace, so that a process
    reading at the same time finds the whole file or none."""
    temporary = f"{path}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    try:
        with open(temporary, "wb") as f:
            f.write(data)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def texts_digest(texts):
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def tokenizer_from(spec, texts, vocab_size, cache_dir):
    """The tokenizer that config.dataset.tokenizer names: "bytes", "sentencepiece" (trained on
    `texts` with `vocab_size`, cached in `cache_dir` by the texts' digest and the settings, and
    never trained again while that file is there) or the path of a .model file."""
    if spec == "sentencepiece":
        if not vocab_size or vocab_size < 0:  # None: a config's placeholder
            raise DataError("tokenizer='sentencepiece' is trained on the corpus and needs "
                            "config.dataset.vocab_size, e.g. 1024 (at least 256 byte pieces + "
                            "the corpus's characters).")
        settings = repr(sorted({**TRAINING, "vocab_size": vocab_size}.items()))
        key = hashlib.sha256(f"{texts_digest(texts)} {settings}".encode()).hexdigest()[:32]
        model_file = os.path.join(cache_dir, f"sentencepiece-{key}.model")
        if not os.path.exists(model_file):
            train(texts, vocab_size, model_file)
        return load_model(model_file)
    if vocab_size:
        raise DataError(f"config.dataset.vocab_size={vocab_size} is for training a SentencePiece "
                        f"tokenizer (tokenizer='sentencepiece'); tokenizer={spec!r} has a "
                        f"vocabulary of its own. Set vocab_size=0.")
    if spec == "bytes":
        return Bytes()
    if isinstance(spec, str) and spec.endswith(".model"):
        if not os.path.isfile(spec):
            raise DataError(f"the SentencePiece model {spec} does not exist. Give the path of a "
                            f".model file, or tokenizer='sentencepiece' to train one.")
        return load_model(spec)
    raise DataError(f"unknown tokenizer {spec!r}: config.dataset.tokenizer is 'bytes', "
                    f"'sentencepiece' (trained on the corpus) or the path of a SentencePiece "
                    f".model file.")
