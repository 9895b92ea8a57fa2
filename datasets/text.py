"""Text for language models: documents from files, tokenized, packed into rows of `seq_len` tokens.

`path` is a folder (every .txt, .md and .jsonl file under it, in subfolders too but not hidden
ones such as .cache/, sorted by relative path) or one such file. A .txt or .md file is one
document; a .jsonl file holds one JSON object a line, the document in its field `text_field`.
With `split_at`, a regular expression (re.MULTILINE: r"^### SCENE"), each of those is split into
documents where it matches: a document starts at each match, and the text before the first one
is a document too. Documents that are empty or only whitespace are dropped.

Files whose relative path matches `exclude` (a regular expression; by default README files, which
describe a corpus rather than belong to it) are left out.

Splits are whole documents, never windows of one: a permutation of the document count drawn from
(seed, count) gives the first round(test_fraction * count) to test, the next
round(validation_fraction * count) to validation, the rest to train; each keeps corpus order.
validation_fraction=0: no validation split (Dataset.validation None); test_fraction=0: the test
split is the validation split.

Tokenizer (datasets/tokenizers.py): "bytes" (the default), "sentencepiece" (trained on all the
documents, held-out ones included, with `vocab_size`) or the path of a SentencePiece .model file.
The token ids of every document are cached in `cache_dir` (default: .cache/ in the data folder,
else ~/.cache/flaxfit/text), keyed by the corpus's files (paths and bytes), split_at, text_field
and the tokenizer, so that the next load reads them instead of tokenizing. Delete the folder to
reclaim the space of corpora changed since.

Packing (each document followed by the end-of-document id, EOD):
  - "concat": a split's documents, in order, make one stream cut into rows of seq_len; the last
    row padded.
  - "first_fit": documents longer than seq_len (with their EOD) cut into pieces of seq_len, and
    pieces placed in order into the first row with room for them.
Each split is in-memory arrays, {"inputs": (N, L, 3), "targets": (N, L, 2)}. inputs[r, i] =
[token, segment, position]: segments 1, 2, ... for each document (or piece) in the row, 0 for
padding (token 0); positions from 0 at each document's start and at the start of a row that
continues one. targets[r, i] = [next token, its UTF-8 byte count]: -1 and 0 where the next token
is not of the same document (after EOD, at a piece's end, on padding); in "concat" the last
position's target is the next row's first token when the document goes on. inputs are uint16
where the ids and seq_len fit, else int32; targets int32. `prepare_inputs` turns rows into
{"tokens", "segment_ids", "positions"}, int32.

A mixture, `mixture={name: {"path": ..., "weight": ...}, ...}` instead of `path` (a source may
also set its own split_at, text_field, exclude): each source read, split and packed as above with
one tokenizer (trained on them all), its rows end to end in each split. Training takes the
sources' rows by weight (Dataset.order): row k of an epoch comes from the source whose share so
far lags its weight most (weights divided by their sum), so that in any window of rows each
source's share is its weight to within a row or two; a source's own rows are taken in a
permutation drawn from (seed, epoch, source), drawn again each time they run out. Validation and
test hold every source's held-out rows.
"""
import dataclasses
import functools
import hashlib
import heapq
import io
import json
import os
import re
import zipfile

import numpy as np

from datasets import DataError, Dataset, tokenizers

EXTENSIONS = (".txt", ".md", ".jsonl")
PACKINGS = ("concat", "first_fit")
CACHE_FORMAT = 1  # part of the cache key: raise it when the cached arrays change


README = r"(?i)(^|/)readme(\.[^/]*)?$"
SOURCE_FIELDS = ("path", "weight", "split_at", "text_field", "exclude")


@dataclasses.dataclass(frozen=True)
class Corpus:
    """A source's documents, and what its token cache is keyed by."""
    path: str
    documents: list
    digest: str
    split_at: str
    text_field: str


def load(path="", seq_len=64, tokenizer="bytes", vocab_size=0, packing="concat", split_at="",
         text_field="text", validation_fraction=0.1, test_fraction=0.05, seed=0, cache_dir="",
         exclude=README, mixture=None) -> Dataset:
    check_fields(seq_len, packing, validation_fraction, test_fraction)
    sources = mixture_sources(path, mixture, dict(split_at=split_at, text_field=text_field,
                                                  exclude=exclude))
    corpora = {name: read_corpus(source) for name, source in sources.items()}
    # The held-out documents of every source first: a bad fraction fails before any training.
    held = {name: held_out(len(corpus.documents), validation_fraction, test_fraction, seed)
            for name, corpus in corpora.items()}
    first = next(iter(corpora.values()))
    tokenizer = tokenizers.tokenizer_from(
        tokenizer, [d for corpus in corpora.values() for d in corpus.documents], vocab_size,
        cache_folder(first.path, cache_dir))
    packed = {}
    for name, corpus in corpora.items():
        key = hashlib.sha256(json.dumps([CACHE_FORMAT, corpus.digest, corpus.split_at,
                                         corpus.text_field, tokenizer.digest]).encode()
                             ).hexdigest()[:32]
        ids, offsets = tokenized(corpus.documents, tokenizer, os.path.join(
            cache_folder(corpus.path, cache_dir), f"tokens-{key}.npz"))
        packed[name] = {split: pack(ids, offsets, docs, seq_len, packing, tokenizer)
                        for split, docs in held[name].items()}
    splits = {split: concatenated([rows[split] for rows in packed.values()])
              for split in next(iter(packed.values()))}
    validation = splits.get("validation")
    order = None
    if mixture:
        order = Mixture(tuple(len(rows["train"]["targets"]) for rows in packed.values()),
                        tuple(float(source["weight"]) for source in sources.values()))
    return Dataset(train=splits["train"], test=splits.get("test", validation),
                   validation=validation, prepare_inputs=prepare_inputs, tokenizer=tokenizer,
                   order=order)


def mixture_sources(path, mixture, defaults):
    """{source name: its fields}: the one source of `path`, or the mixture's, checked."""
    if not mixture:
        return {"": dict(defaults, path=path, section="config.dataset")}
    if path:
        raise DataError("config.dataset has both a path and a mixture: give the sources' paths in "
                        "config.dataset.mixture.<name>.path, and no config.dataset.path.")
    sources = {}
    for name, source in dict(mixture).items():
        source = dict(source) if hasattr(source, "items") else {}
        unknown = sorted(set(source) - set(SOURCE_FIELDS))
        if unknown:
            raise DataError(f"config.dataset.mixture.{name} has unknown field(s) "
                            f"{', '.join(unknown)}: a source takes {', '.join(SOURCE_FIELDS)}.")
        if not source.get("path"):
            raise DataError(f"config.dataset.mixture.{name} has no path: give each source "
                            f"dict(path=..., weight=...).")
        weight = source.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise DataError(f"config.dataset.mixture.{name}.weight={weight!r}: give each source a "
                            f"weight > 0 (its share of the training rows, once the weights are "
                            f"divided by their sum).")
        sources[name] = {**defaults, **{k: v for k, v in source.items() if v is not None},
                         "section": f"config.dataset.mixture.{name}"}
    return sources


def read_corpus(source):
    pattern = compile_split_at(source["split_at"], source["section"])
    files = list_files(source["path"], source["exclude"], source["section"])
    contents = []
    for _, file in files:
        with open(file, "rb") as f:
            contents.append(f.read())
    documents = [document for (relative, file), data in zip(files, contents)
                 for document in file_documents(file, relative, data, pattern,
                                                source["text_field"], source["section"])]
    if not documents:
        raise DataError(f"{source['section']}.path={source['path']!r} holds no text: its files are "
                        f"empty or only whitespace. Point it at the corpus.")
    return Corpus(source["path"], documents, corpus_digest(files, contents), source["split_at"],
                  source["text_field"])


def concatenated(splits):
    if len(splits) == 1:
        return splits[0]
    return {name: np.concatenate([split[name] for split in splits]) for name in splits[0]}


@dataclasses.dataclass(frozen=True, eq=False)
class Mixture:
    """The training rows of an epoch, the sources' by weight (Dataset.order): `sizes`, each
    source's rows, end to end in the training split."""
    sizes: tuple
    weights: tuple

    def __call__(self, seed, epoch):
        sources = self.schedule()
        offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        rows = np.empty(len(sources), np.int64)
        for s, size in enumerate(self.sizes):
            taken = np.flatnonzero(sources == s)
            cycles = -(-len(taken) // size)
            rows[taken] = offsets[s] + np.concatenate([
                np.random.default_rng([seed, epoch, s, cycle]).permutation(size)
                for cycle in range(cycles)])[:len(taken)]
        return rows

    @functools.lru_cache(maxsize=1)
    def schedule(self):
        """The source of each row of an epoch: at each row the one furthest behind its share."""
        shares = np.asarray(self.weights) / sum(self.weights)
        taken = np.zeros(len(shares))
        sources = np.empty(sum(self.sizes), np.int64)
        for k in range(len(sources)):
            s = int(np.argmax(shares * (k + 1) - taken))
            sources[k] = s
            taken[s] += 1
        return sources


def prepare_inputs(inputs):
    """Rows (..., L, 3) to the model's inputs; traced inside the step (NumPy or JAX arrays)."""
    return {"tokens": inputs[..., 0].astype(np.int32),
            "segment_ids": inputs[..., 1].astype(np.int32),
            "positions": inputs[..., 2].astype(np.int32)}


def check_fields(seq_len, packing, validation_fraction, test_fraction):
    if seq_len < 2:
        raise DataError(f"config.dataset.seq_len={seq_len}: a row needs at least 2 tokens (one "
                        f"to predict the next). Set seq_len >= 2, e.g. 64.")
    if packing not in PACKINGS:
        raise DataError(f"unknown config.dataset.packing={packing!r}: 'concat' (documents end to "
                        f"end, cut into rows) or 'first_fit' (whole documents into rows).")
    for name, fraction in (("validation_fraction", validation_fraction),
                           ("test_fraction", test_fraction)):
        if not 0 <= fraction < 1:
            raise DataError(f"config.dataset.{name}={fraction} is out of range: a fraction of the "
                            f"documents, 0 <= {name} < 1.")
    if validation_fraction + test_fraction >= 1:
        raise DataError(f"config.dataset.validation_fraction={validation_fraction} and "
                        f"test_fraction={test_fraction} leave no document for training: lower "
                        f"them to less than 1 together.")


def compile_split_at(split_at, section="config.dataset"):
    if not split_at:
        return None
    try:
        return re.compile(split_at, re.MULTILINE)
    except re.error as e:
        raise DataError(f"{section}.split_at={split_at!r} is not a regular expression: "
                        f"{e}. Fix it (Python re syntax, e.g. r'^### SCENE').") from e


def list_files(path, exclude=README, section="config.dataset"):
    """(relative path, path) of every file of the corpus, sorted, but those `exclude` matches;
    `section`: the config section that gave `path` and `exclude`, for errors."""
    field = f"{section}.path"
    if not os.path.exists(path):
        raise DataError(f"{field}={path!r} does not exist. Point it at a folder of "
                        f"{', '.join(EXTENSIONS)} files or at one such file.")
    if os.path.isfile(path):
        if not path.lower().endswith(EXTENSIONS):
            raise DataError(f"{field}={path!r} is not a {', '.join(EXTENSIONS)} "
                            f"file. Point it at one, or at a folder of them.")
        return [(os.path.basename(path), path)]
    found = []
    for root, folders, names in os.walk(path):
        folders[:] = [f for f in folders if not f.startswith(".")]  # our .cache/, .git/
        found += [(os.path.relpath(os.path.join(root, name), path), os.path.join(root, name))
                  for name in names if name.lower().endswith(EXTENSIONS)]
    try:
        skipped = re.compile(exclude) if exclude else None
    except re.error as e:
        raise DataError(f"{section}.exclude={exclude!r} is not a regular expression: {e}. "
                        f"Fix it, or give '' to exclude nothing.") from e
    if skipped:
        found = [(relative, file) for relative, file in found
                 if not skipped.search(relative.replace(os.sep, "/"))]
    if not found:
        raise DataError(f"the folder {field}={path!r} holds no {', '.join(EXTENSIONS)} "
                        f"file (in it or its subfolders). Point it at the corpus.")
    return sorted(found)


def file_documents(file, relative, data, pattern, text_field, section):
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{file} is not UTF-8 text: byte {e.start} (0x{data[e.start]:02x}) does "
                        f"not decode. Convert it to UTF-8 (iconv -t utf-8) or remove it.") from e
    texts = (jsonl_texts(file, text, text_field, section) if relative.lower().endswith(".jsonl")
             else [text])
    return [document for t in texts for document in split(t, pattern)]


def jsonl_texts(file, text, text_field, section):
    texts = []
    # Not splitlines(): it also splits at characters such as U+2028, which JSON strings may hold.
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{file}:{number} is not JSON ({e.msg}). Each line of a .jsonl file "
                            f"is one JSON object, e.g. {{\"{text_field}\": \"...\"}}.") from e
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise DataError(f"{file}:{number} has no text field {text_field!r} (a string). Set "
                            f"{section}.text_field to the field that holds the document.")
        texts.append(record[text_field])
    return texts


def split(text, pattern):
    if pattern is None:
        bounds = [0, len(text)]
    else:
        bounds = sorted({0, len(text), *(match.start() for match in pattern.finditer(text))})
    return [text[a:b] for a, b in zip(bounds, bounds[1:]) if text[a:b].strip()]


def corpus_digest(files, contents):
    digest = hashlib.sha256()
    for (relative, _), data in zip(files, contents):
        name = relative.replace(os.sep, "/").encode("utf-8")
        digest.update(len(name).to_bytes(8, "little") + name + len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def cache_folder(path, cache_dir):
    if cache_dir:
        try:
            os.makedirs(cache_dir, exist_ok=True)
        except OSError as e:
            raise DataError(f"cannot make config.dataset.cache_dir={cache_dir!r}: {e.strerror}. "
                            f"Give a folder this process can write.") from e
        return cache_dir
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    beside = os.path.join(folder, ".cache")
    try:
        os.makedirs(beside, exist_ok=True)
        if os.access(beside, os.W_OK):
            return beside
    except OSError:
        pass  # a read-only data folder: the cache goes to the home folder
    home = os.path.join(os.path.expanduser("~"), ".cache", "flaxfit", "text")
    os.makedirs(home, exist_ok=True)
    return home


def token_dtype(vocab_size):
    return np.uint16 if vocab_size <= 1 << 16 else np.int32


def tokenized(documents, tokenizer, cache_file):
    """(ids, offsets): every document's token ids end to end, document k at
    ids[offsets[k]:offsets[k + 1]]; read from `cache_file`, else tokenized and written there."""
    if os.path.exists(cache_file):
        try:
            with np.load(cache_file) as saved:
                ids, offsets = saved["ids"], saved["offsets"]
            if len(offsets) == len(documents) + 1 and offsets[-1] == len(ids):
                return ids, offsets
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # damaged: tokenized again and replaced
    encoded = [np.asarray(tokenizer.encode(d), token_dtype(tokenizer.vocab_size))
               for d in documents]
    ids = np.concatenate(encoded)
    offsets = np.concatenate([[0], np.cumsum([len(e) for e in encoded])]).astype(np.int64)
    saved = io.BytesIO()
    np.savez(saved, ids=ids, offsets=offsets)
    try:
        tokenizers.write_atomically(cache_file, saved.getvalue())
    except OSError as e:
        raise DataError(f"cannot write the token cache {cache_file}: {e.strerror}. Give "
                        f"config.dataset.cache_dir a folder this process can write.") from e
    return ids, offsets


def held_out(count, validation_fraction, test_fraction, seed):
    """The documents of each split, {"train", "test", "validation"}, sorted; a split with a
    fraction of 0 is left out."""
    order = np.random.default_rng([seed, count]).permutation(count)
    num_test, num_validation = round(test_fraction * count), round(validation_fraction * count)
    splits = {"test": order[:num_test], "validation": order[num_test:num_test + num_validation],
              "train": order[num_test + num_validation:]}
    if not validation_fraction and not test_fraction:
        raise DataError("config.dataset.test_fraction=0 tests on the validation split, and "
                        "validation_fraction=0 gives none: set one of them above 0.")
    if not len(splits["train"]):
        raise DataError(f"config.dataset.validation_fraction={validation_fraction} and "
                        f"test_fraction={test_fraction} leave none of the {count} documents for "
                        f"training: lower them.")
    for name, fraction in (("test", test_fraction), ("validation", validation_fraction)):
        if fraction and not len(splits[name]):
            raise DataError(f"config.dataset.{name}_fraction={fraction} of {count} documents is "
                            f"no document: raise it, or set it to 0"
                            f"{' (test on the validation split)' if name == 'test' else ''}.")
    return {name: np.sort(docs) for name, docs in splits.items() if len(docs)}


def pack(ids, offsets, docs, seq_len, packing, tokenizer):
    stream, starts = document_stream(ids, offsets, docs, tokenizer.eod_id)
    tokens, segments, positions, targets = (concat if packing == "concat" else first_fit)(
        stream, starts, seq_len)
    # Ids below 2**16 and positions and segments below seq_len: half the memory of int32.
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 and seq_len < 1 << 16 else np.int32
    target_bytes = np.where(targets >= 0, tokenizer.token_bytes[np.maximum(targets, 0)], 0)
    return {"inputs": np.stack([tokens, segments, positions], -1).astype(dtype).reshape(
                -1, seq_len, 3),
            "targets": np.stack([targets, target_bytes], -1).astype(np.int32).reshape(
                -1, seq_len, 2)}


def ranges(starts, lengths):
    """The indices starts[k] + 0, 1, ..., lengths[k] - 1 for each k, end to end."""
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + within


def document_stream(ids, offsets, docs, eod):
    """(stream, starts): the documents `docs`, in order, each followed by EOD; document k at
    stream[starts[k]:starts[k + 1]]."""
    lengths = offsets[docs + 1] - offsets[docs]
    starts = np.concatenate([[0], np.cumsum(lengths + 1)])
    stream = np.full(starts[-1], eod, np.int64)
    stream[ranges(starts[:-1], lengths)] = ids[ranges(offsets[docs], lengths)]
    return stream, starts


def concat(stream, starts, seq_len):
    """Flat (tokens, segments, positions, targets) of the stream cut into rows of seq_len."""
    size = -(-len(stream) // seq_len) * seq_len
    doc = np.full(size, -1)
    doc[:len(stream)] = np.repeat(np.arange(len(starts) - 1), np.diff(starts))
    real = doc >= 0
    by_row = doc.reshape(-1, seq_len)
    segments = np.where(real, (by_row - by_row[:, :1]).reshape(-1) + 1, 0)
    # Positions count from the last document start or row start, whichever came later.
    restart = np.zeros(size, np.int64)
    restart[::seq_len] = np.arange(0, size, seq_len)
    restart[starts[:-1]] = starts[:-1]
    positions = np.where(real, np.arange(size) - np.maximum.accumulate(restart), 0)
    has_next = real.copy()
    has_next[starts[1:] - 1] = False  # each document's EOD
    following = np.zeros(size, np.int64)
    following[:len(stream) - 1] = stream[1:]
    targets = np.where(has_next, following, -1)
    tokens = np.zeros(size, np.int64)
    tokens[:len(stream)] = stream
    return tokens, segments, positions, targets


def first_fit(stream, starts, seq_len):
    """Flat (tokens, segments, positions, targets) of the documents, cut into pieces of at most
    seq_len, placed in order into the first row with room."""
    lengths = np.diff(starts)
    counts = -(-lengths // seq_len)
    piece_starts = ranges(np.zeros_like(counts), counts) * seq_len + np.repeat(starts[:-1], counts)
    piece_lengths = np.minimum(seq_len, np.repeat(starts[1:], counts) - piece_starts)
    rows, columns, segments = place(piece_lengths, seq_len)
    size = (rows.max() + 1) * seq_len
    dest = ranges(rows * seq_len + columns, piece_lengths)
    source = ranges(piece_starts, piece_lengths)
    within = ranges(np.zeros_like(piece_lengths), piece_lengths)
    flat = [np.zeros(size, np.int64) for _ in range(3)] + [np.full(size, -1, np.int64)]
    flat[0][dest], flat[1][dest], flat[2][dest] = (
        stream[source], np.repeat(segments, piece_lengths), within)
    inner = within < np.repeat(piece_lengths, piece_lengths) - 1
    flat[3][dest[inner]] = stream[source[inner] + 1]
    return flat


def place(lengths, seq_len):
    """First fit: the (row, column, segment id) of each piece, placed in order into the first row
    with room for it. The lowest row of each amount of room left is tracked (a heap of rows per
    amount), so that each piece takes one look across seq_len amounts, not across all rows."""
    none = np.iinfo(np.int64).max
    lowest = np.full(seq_len + 1, none)  # lowest[room]: the first row with that much room left
    heaps = [[] for _ in range(seq_len + 1)]
    used, pieces = [], []  # tokens and pieces of each row so far
    placed = np.empty((len(lengths), 3), np.int64)
    for i, length in enumerate(lengths.tolist()):
        room = length + int(np.argmin(lowest[length:seq_len])) if length < seq_len else seq_len
        if lowest[room] == none:
            room, row = seq_len, len(used)
            used.append(0)
            pieces.append(0)
        else:
            row = heapq.heappop(heaps[room])
            lowest[room] = heaps[room][0] if heaps[room] else none
        pieces[row] += 1
        placed[i] = row, used[row], pieces[row]
        used[row] += length
        if room > length:
            heapq.heappush(heaps[room - length], row)
            lowest[room - length] = heaps[room - length][0]
    return placed[:, 0], placed[:, 1], placed[:, 2]
