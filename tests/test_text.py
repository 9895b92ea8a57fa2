"""datasets/text.py and datasets/tokenizers.py: documents, tokenizers, packing, splits, cache."""
import collections
import json
import os
import pickle
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from datasets import DataError, text, tokenizers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAKESPEARE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "shakespeare")
ODD = "naïve café — 東京 🦀 e\u0301 \u200b\u2028 مرحبا \x00\r\n\ttabs  two  \n"
VERSE = "Now, fair Hippolyta, our nuptial hour  \nDraws on apace;  four happy days  \n\n"


def write(folder, files):
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return str(folder)


def words(rng, n):
    vocabulary = ["the", "king", "queen", "lord", "of", "and", "thee", "thou", "hath", "é", "—"]
    return " ".join(rng.choice(vocabulary, n))


@pytest.fixture
def corpus(tmp_path):
    """30 documents of 0 to 40 words (one 3 bytes long), in nested folders, one .txt per doc."""
    rng = np.random.default_rng(0)
    docs = {f"{'sub/' if i % 3 else ''}doc{i:02d}.txt":
            f"<{i}> " + words(rng, int(rng.integers(0, 40))) for i in range(30)}
    docs["sub/doc05.txt"] = "<5>"
    return tmp_path / "corpus", docs


def ordered(docs):
    return [docs[name] for name in sorted(docs)]


def pieces_of(split):
    """The token ids of each segment of each row, in row order."""
    return [tuple(int(t) for t in row[row[:, 1] == segment, 0])
            for row in split["inputs"] for segment in range(1, row[:, 1].max() + 1)]


def documents_of(split, eod):
    """The documents of a split packed by concat, each as its token ids with EOD: its segments
    end to end, cut after each EOD."""
    stream = np.concatenate([np.array(p, np.int64) for p in pieces_of(split)])
    ends = np.flatnonzero(stream == eod) + 1
    return [tuple(int(t) for t in d) for d in np.split(stream, ends)[:-1]]


def first_fit_documents(split, expected, seq_len):
    """The documents of `expected` (token ids with EOD, in corpus order) that a split packed by
    first fit holds: those whose pieces it holds (a document's last piece may sit in an earlier
    row than its first), checking that it holds nothing else."""
    pieces = collections.Counter(pieces_of(split))
    held = []
    for document in expected:
        chunks = collections.Counter(chunks_of(document, seq_len))
        if all(pieces[c] >= n for c, n in chunks.items()):
            pieces -= chunks
            held.append(document)
    assert not pieces
    return held


def chunks_of(document, seq_len):
    return [document[i:i + seq_len] for i in range(0, len(document), seq_len)]


def check_rows(split, tokenizer, packing, seq_len):
    """The row format's promises, row by row."""
    inputs, targets = split["inputs"], split["targets"]
    assert inputs.shape[1:] == (seq_len, 3) and targets.shape == inputs.shape[:2] + (2,)
    assert targets.dtype == np.int32 and inputs.dtype == np.uint16
    inputs = inputs.astype(np.int64)
    pieces = []
    for row, target in zip(inputs, targets):
        tokens, segments, positions = row.T
        pad = segments == 0
        assert not tokens[pad].any() and not positions[pad].any()
        assert (target[pad, 0] == -1).all() and (target[pad, 1] == 0).all()
        # Padding only at the end of a row; segments 1, 2, ... in order, each a run.
        count = (~pad).sum()
        assert not pad[:count].any()
        assert (np.diff(segments[:count]) >= 0).all() and (np.diff(segments[:count]) <= 1).all()
        assert count == 0 or segments[0] == 1
        for segment in range(1, segments.max() + 1):
            where = np.flatnonzero(segments == segment)
            assert (positions[where] == np.arange(len(where))).all()
            pieces.append((tokens[where], target[where]))
    eod, token_bytes = tokenizer.eod_id, tokenizer.token_bytes
    for i, (piece, target) in enumerate(pieces):
        assert (target[:, 1] == np.where(target[:, 0] >= 0, token_bytes[target[:, 0]], 0)).all()
        assert (target[:-1, 0] == np.where(piece[:-1] == eod, -1, piece[1:])).all()
        if packing == "first_fit" or piece[-1] == eod:  # no target across a document or piece
            assert target[-1, 0] == -1
        else:  # concat: the document goes on in the next row
            assert target[-1, 0] == pieces[i + 1][0][0]
        assert (piece[:-1] != eod).all()


@pytest.mark.parametrize("packing", ["concat", "first_fit"])
def test_rows_hold_every_document_once_in_order(corpus, packing):
    folder, docs = corpus
    seq_len = 16
    data = text.load(write(folder, docs), seq_len=seq_len, packing=packing,
                     validation_fraction=0.2, test_fraction=0.1)
    tokenizer = data.tokenizer
    expected = [tuple(tokenizer.encode(d)) + (tokenizer.eod_id,) for d in ordered(docs)]
    assert max(len(d) for d in expected) > 2 * seq_len  # long documents are cut
    found = []
    for split in (data.train, data.validation, data.test):
        check_rows(split, tokenizer, packing, seq_len)
        if packing == "concat":
            held = documents_of(split, tokenizer.eod_id)
            assert held == sorted(held, key=expected.index)  # in corpus order
        else:
            held = first_fit_documents(split, expected, seq_len)
            pieces = [p for d in held for p in chunks_of(d, seq_len)]
            assert naive_first_fit(pieces, seq_len) == pieces_by_row(split)
        found += held
    assert sorted(found) == sorted(expected)


def naive_first_fit(pieces, seq_len):
    rows = []
    for piece in pieces:
        row = next((r for r in rows if len(r) + len(piece) <= seq_len), None)
        if row is None:
            rows.append(row := [])
        row.extend(piece)
    return [tuple(r) for r in rows]


def pieces_by_row(split):
    return [tuple(int(t) for t in row[row[:, 1] > 0, 0]) for row in split["inputs"]]


def test_long_documents_are_cut_not_refused(tmp_path):
    """A document of exactly seq_len with its EOD fills a row; a longer one is cut into pieces."""
    folder = write(tmp_path, {"a.txt": "x" * 7, "b.txt": "y" * 20, "c.txt": "z"})
    for packing in ("concat", "first_fit"):
        data = text.load(folder, seq_len=8, packing=packing, validation_fraction=0,
                         test_fraction=0.34, seed=0)
        rows = pieces_by_row(data.train) + pieces_by_row(data.test)
        assert sum(len(row) for row in rows) == 7 + 20 + 1 + 3
        if packing == "first_fit":
            assert (ord("x"),) * 7 + (256,) in rows and (ord("y"),) * 8 in rows


def test_concat_rows_are_the_stream_cut(corpus):
    folder, docs = corpus
    data = text.load(write(folder, docs), seq_len=8, validation_fraction=0, test_fraction=0.1)
    inputs, targets = data.train["inputs"], data.train["targets"]
    stream = inputs[..., 0].reshape(-1)[inputs[..., 1].reshape(-1) > 0].astype(np.int64)
    assert (inputs[:-1, :, 1] > 0).all()  # only the last row is padded
    flat_targets = targets[..., 0].reshape(-1)[:len(stream)]
    assert (flat_targets[:-1] == np.where(stream[:-1] == 256, -1, stream[1:])).all()


def test_bytes_tokenizer_round_trip():
    tokenizer = tokenizers.tokenizer_from("bytes", [], 0, "")
    ids = tokenizer.encode(ODD)
    assert ids == list(ODD.encode("utf-8")) and tokenizer.decode(ids) == ODD
    assert tokenizer.decode(ids + [256] + ids) == ODD + ODD  # EOD dropped
    assert tokenizer.decode([0xE6, 0x9D, 104]) == "\ufffdh"  # a cut character: replaced
    assert (tokenizer.vocab_size, tokenizer.eod_id) == (257, 256)
    assert tokenizer.token_bytes.dtype == np.int32 and tokenizer.token_bytes[ids].sum() == len(
        ODD.encode("utf-8")) and tokenizer.token_bytes[256] == 0


@pytest.fixture(scope="module")
def sentencepiece_corpus():
    """The test extra installs sentencepiece (pyproject.toml's `text` extra)."""
    rng = np.random.default_rng(1)
    lines = ["  \n".join(words(rng, 8) for _ in range(4)) + "\n\n**KING**  \n" for _ in range(60)]
    return lines + [VERSE, "Thou art a — lord.\n"]


def test_sentencepiece_round_trip_and_deterministic_training(tmp_path, sentencepiece_corpus):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    tokenizer = tokenizers.tokenizer_from("sentencepiece", sentencepiece_corpus, 300, str(first))
    again = tokenizers.tokenizer_from("sentencepiece", sentencepiece_corpus, 300, str(second))
    with open(tokenizer.model_file, "rb") as a, open(again.model_file, "rb") as b:
        assert a.read() == b.read()
    assert tokenizer.digest == again.digest and len(tokenizer.digest) == 64
    assert os.path.dirname(tokenizer.model_file) == str(first)
    # Cached: not trained again while the file is there.
    stat = os.stat(tokenizer.model_file)
    tokenizers.tokenizer_from("sentencepiece", sentencepiece_corpus, 300, str(first))
    assert os.stat(tokenizer.model_file).st_mtime_ns == stat.st_mtime_ns
    for sample in (VERSE, ODD, "  lead\n\n\ntrail  ", "the king  \n" * 3):
        ids = tokenizer.encode(sample)
        assert tokenizer.decode(ids) == sample
        assert tokenizer.decode(ids + [tokenizer.eod_id]) == sample
        assert tokenizer.token_bytes[ids].sum() == len(sample.encode("utf-8"))
    assert len(tokenizer.encode("the king the queen")) < len("the king the queen")
    assert tokenizer.decode(tokenizer.encode("x\u2581y")) == "x y"  # its mark for a space
    assert tokenizer.vocab_size == 300 and tokenizer.token_bytes[tokenizer.eod_id] == 0
    assert pickle.loads(pickle.dumps(tokenizer)).encode(VERSE) == tokenizer.encode(VERSE)
    # A different vocabulary is another model.
    assert tokenizers.tokenizer_from("sentencepiece", sentencepiece_corpus, 320,
                                     str(first)).digest != tokenizer.digest


def test_sentencepiece_from_a_model_file(tmp_path, sentencepiece_corpus):
    trained = tokenizers.tokenizer_from("sentencepiece", sentencepiece_corpus, 300, str(tmp_path))
    mine = tmp_path / "mine.model"
    shutil.copy(trained.model_file, mine)
    loaded = tokenizers.tokenizer_from(str(mine), [], 0, "")
    assert loaded.digest == trained.digest and loaded.model_file == str(mine)
    assert loaded.decode(loaded.encode(VERSE)) == VERSE
    folder = write(tmp_path / "corpus", {f"{i}.md": f"{VERSE}{i}\n" for i in range(20)})
    data = text.load(folder, tokenizer=str(mine), seq_len=32)
    assert data.tokenizer.digest == trained.digest
    assert data.train["inputs"][..., 0].max() < 300
    bad = tmp_path / "bad.model"
    bad.write_text("not a model")
    with pytest.raises(DataError, match=re.escape(str(bad))) as info:
        tokenizers.tokenizer_from(str(bad), [], 0, "")
    assert "\n" not in str(info.value)


def test_sentencepiece_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # import raises ImportError
    with pytest.raises(DataError, match="pip install sentencepiece"):
        tokenizers.tokenizer_from("sentencepiece", ["text"], 300, "")


def test_sentencepiece_through_load(tmp_path, sentencepiece_corpus):
    folder = write(tmp_path, {f"d{i:02d}.md": t for i, t in enumerate(sentencepiece_corpus)})
    data = text.load(folder, tokenizer="sentencepiece", vocab_size=300, seq_len=32,
                     packing="first_fit")
    tokenizer = data.tokenizer
    assert tokenizer.model_file.startswith(os.path.join(folder, ".cache"))
    expected = [tuple(tokenizer.encode(d)) + (tokenizer.eod_id,) for d in sentencepiece_corpus]
    found = []
    for split in (data.train, data.validation, data.test):
        check_rows(split, tokenizer, "first_fit", 32)
        found += first_fit_documents(split, expected, 32)
    assert sorted(found) == sorted(expected)


def test_documents_split_at_a_regular_expression(tmp_path):
    play = ("# Title\n\n## ACT I\n\n### SCENE I. A room.\n\nOne.  \n\n## ACT II\n\n"
            "### SCENE I. Another.\n\nTwo.\n### SCENE II.\nThree.\n")
    folder = write(tmp_path, {"play.md": play, "blank.md": "\n\n### SCENE X.\nOnly.\n",
                              "empty.txt": "", "spaces.txt": " \n\t"})
    data = text.load(folder, split_at=r"^### SCENE", validation_fraction=0.2, test_fraction=0.2,
                     cache_dir=str(tmp_path / "cache"))
    found = [data.tokenizer.decode(d) for s in (data.train, data.validation, data.test)
             for d in documents_of(s, 256)]
    # Sorted paths: blank.md (its whitespace before the match dropped), play.md.
    assert sorted(found) == sorted(["### SCENE X.\nOnly.\n", "# Title\n\n## ACT I\n\n",
                                    "### SCENE I. A room.\n\nOne.  \n\n## ACT II\n\n",
                                    "### SCENE I. Another.\n\nTwo.\n", "### SCENE II.\nThree.\n"])


def test_jsonl_documents(tmp_path):
    # A raw U+2028 in a JSON string: a line separator to str.splitlines, not to JSON Lines.
    lines = [json.dumps({"text": f"doc {i}\u2028end", "id": i}, ensure_ascii=False)
             for i in range(10)]
    folder = write(tmp_path, {"a.jsonl": "\n".join(lines[:6]) + "\n\n",
                              "more/b.jsonl": "\n".join(lines[6:])})
    data = text.load(folder, validation_fraction=0.2, test_fraction=0.1)
    found = [data.tokenizer.decode(d) for s in (data.train, data.validation, data.test)
             for d in documents_of(s, 256)]
    assert sorted(found) == sorted(json.loads(line)["text"] for line in lines)
    body = text.load(os.path.join(folder, "a.jsonl"), text_field="text", test_fraction=0.2,
                     validation_fraction=0)
    assert sum(len(documents_of(s, 256)) for s in (body.train, body.test)) == 6


def split_documents(data, expected, packing):
    return {name: documents_of(split, 256) if packing == "concat" else
            first_fit_documents(split, expected, split["inputs"].shape[1]) for name, split
            in (("train", data.train), ("validation", data.validation), ("test", data.test))}


def test_held_out_documents_whole_deterministic_disjoint(corpus):
    folder, docs = corpus
    folder = write(folder, docs)
    expected = [tuple(d.encode("utf-8")) + (256,) for d in ordered(docs)]
    def splits(packing="concat", **fields):
        data = text.load(folder, validation_fraction=0.2, test_fraction=0.1, packing=packing,
                         **fields)
        return split_documents(data, expected, packing)

    chosen = splits(seq_len=8, seed=3)
    assert {k: len(v) for k, v in chosen.items()} == {"train": 21, "validation": 6, "test": 3}
    assert sorted(sum(chosen.values(), [])) == sorted(expected)  # whole, disjoint, all
    assert chosen == splits(seq_len=8, seed=3)
    other = splits(seq_len=8, seed=4)
    assert other["test"] != chosen["test"]
    assert other == splits(seq_len=32, seed=4, packing="first_fit")


def test_fractions_of_zero(corpus):
    folder, docs = corpus
    folder = write(folder, docs)
    data = text.load(folder, validation_fraction=0, test_fraction=0.1)
    assert data.validation is None and len(documents_of(data.test, 256)) == 3
    data = text.load(folder, validation_fraction=0.1, test_fraction=0)
    assert data.test is data.validation and len(documents_of(data.test, 256)) == 3


def test_prepare_inputs(corpus):
    folder, docs = corpus
    data = text.load(write(folder, docs), seq_len=8, vocab_size=None)  # a config's placeholder
    prepared = data.prepare_inputs(data.train["inputs"][:2])
    assert set(prepared) == {"tokens", "segment_ids", "positions"}
    for name, column in zip(("tokens", "segment_ids", "positions"), range(3)):
        assert prepared[name].dtype == np.int32 and prepared[name].shape == (2, 8)
        assert (prepared[name] == data.train["inputs"][:2, :, column]).all()


def test_cache_read_again_not_rewritten_and_keyed_by_the_corpus(corpus):
    folder, docs = corpus
    folder = write(folder, docs)
    first = text.load(folder, split_at=r"^<")
    cache = os.path.join(folder, ".cache")
    [name] = os.listdir(cache)
    stat = os.stat(os.path.join(cache, name))
    second = text.load(folder, split_at=r"^<")
    for split in ("train", "validation", "test"):
        for part in ("inputs", "targets"):
            assert np.array_equal(getattr(first, split)[part], getattr(second, split)[part])
    after = os.stat(os.path.join(cache, name))
    assert (after.st_mtime_ns, after.st_ino) == (stat.st_mtime_ns, stat.st_ino)
    with open(os.path.join(folder, "doc00.txt"), "a", encoding="utf-8") as f:
        f.write(" more")
    text.load(folder, split_at=r"^<")
    assert len(os.listdir(cache)) == 2
    text.load(folder, split_at=r"^<\d")  # another split_at: another key
    text.load(folder, seq_len=4, packing="first_fit")  # none
    assert len(os.listdir(cache)) == 4
    text.load(folder, seq_len=4, packing="first_fit", seed=1)  # packing and splits: not in the key
    assert len(os.listdir(cache)) == 4


def test_processes_loading_at_once_share_the_cache(corpus):
    """Each writes the cache whole under another name and renames it: neither reads a part."""
    folder, docs = corpus
    folder = write(folder, docs)
    load = (f"import sys; sys.path.insert(0, {REPO!r}); from datasets import text\n"
            f"for seq_len in range(4, 12): text.load({folder!r}, seq_len=seq_len)")
    processes = [subprocess.Popen([sys.executable, "-c", load], stderr=subprocess.PIPE)
                 for _ in range(2)]
    assert [p.communicate()[1].decode() for p in processes] == ["", ""]
    assert [p.returncode for p in processes] == [0, 0]
    assert [name.endswith(".npz") for name in os.listdir(os.path.join(folder, ".cache"))] == [True]


def test_damaged_cache_is_replaced(corpus):
    folder, docs = corpus
    folder = write(folder, docs)
    first = text.load(folder)
    [name] = os.listdir(os.path.join(folder, ".cache"))
    with open(os.path.join(folder, ".cache", name), "wb") as f:
        f.write(b"partial")
    assert np.array_equal(text.load(folder).train["inputs"], first.train["inputs"])


ERRORS = [
    (dict(path="missing"), "does not exist"),
    (dict(path="images"), "holds no .txt, .md, .jsonl file"),
    (dict(path="latin1"), r"latin1/b\.txt is not UTF-8 text: byte 4 \(0xe9\)"),
    (dict(path="notjson"), r"notjson/a\.jsonl:2 is not JSON"),
    (dict(path="nofield"), r"nofield/a\.jsonl:1 has no text field 'text'"),
    (dict(seq_len=1), "seq_len=1"),
    (dict(packing="best_fit"), "unknown config.dataset.packing='best_fit'"),
    (dict(tokenizer="gpt2"), "unknown tokenizer 'gpt2'"),
    (dict(tokenizer="missing.model"), "missing.model does not exist"),
    (dict(tokenizer="sentencepiece"), "needs config.dataset.vocab_size"),
    (dict(tokenizer="sentencepiece", vocab_size=None), "needs config.dataset.vocab_size"),
    (dict(vocab_size=512), "vocab_size=512 is for training a SentencePiece"),
    (dict(validation_fraction=1.0), "validation_fraction=1.0 is out of range"),
    (dict(test_fraction=-0.1), "test_fraction=-0.1 is out of range"),
    (dict(validation_fraction=0.6, test_fraction=0.4), "leave no document for training"),
    (dict(test_fraction=0.1), r"test_fraction=0.1 of 3 documents is no document: raise it"),
    (dict(validation_fraction=0, test_fraction=0), "set one of them above 0"),
    (dict(validation_fraction=0.5, test_fraction=0.4), "leave none of the 3 documents"),
    (dict(split_at="(unclosed"), re.escape("split_at='(unclosed' is not a regular expression")),
]


@pytest.mark.parametrize("fields,message", ERRORS, ids=[m[:24] for _, m in ERRORS])
def test_errors(tmp_path, fields, message):
    write(tmp_path, {"text/a.txt": "one", "text/b.md": "two", "text/c.txt": "three",
                     "images/a.png": b"\x89PNG", "latin1/a.txt": "fine",
                     "latin1/b.txt": b"abcd\xe9t\xe9",
                     "notjson/a.jsonl": '{"text": "a"}\n{"text": \n',
                     "nofield/a.jsonl": '{"body": "a"}\n'})
    fields = {"validation_fraction": 0.34, "test_fraction": 0.34, **fields}
    fields["path"] = str(tmp_path / fields.get("path", "text"))
    with pytest.raises(DataError, match=message) as info:
        text.load(**fields)
    assert "\n" not in str(info.value)


def test_shakespeare_by_scene():
    """The real corpus: 38 plays (the folder's README.md left out, as every README is); each
    play's opening (title, ACT I) before its first scene is a document too."""
    if not os.path.isdir(SHAKESPEARE):
        pytest.fail(f"the Shakespeare corpus is expected at {SHAKESPEARE} (see its README)")
    expected = []
    for relative, path in text.list_files(SHAKESPEARE):
        with open(path, "rb") as f:
            content = f.read()
        starts = [m.start() for m in re.finditer(rb"^### SCENE", content, re.MULTILINE)]
        bounds = sorted({0, len(content), *starts})
        expected += [content[a:b] for a, b in zip(bounds, bounds[1:])]
    assert len(expected) == 761 + 38
    data = text.load(SHAKESPEARE, split_at=r"^### SCENE", seq_len=64)
    splits = (data.train, data.validation, data.test)
    found = []
    for split in splits:
        inputs = split["inputs"].reshape(-1, 3)
        stream = inputs[inputs[:, 1] > 0, 0]  # concat: padding only at the end
        ends = np.flatnonzero(stream == 256)
        assert ends[-1] == len(stream) - 1
        found += [d[:-1].astype(np.uint8).tobytes() for d in np.split(stream, ends + 1)[:-1]]
        # Each document's first byte is no target; its EOD is, with 0 bytes.
        assert split["targets"][..., 1].sum() == len(stream) - 2 * len(ends)
    assert sorted(found) == sorted(expected)  # every byte of the corpus, once
    assert [len(s["inputs"]) for s in splits] == [71557, 7824, 3740]
    assert sum((s["inputs"][..., 1] > 0).sum() for s in splits) == 5_318_858 + 799


def mixture_corpus(tmp_path):
    """Three sources of different sizes: 'a' letters, 'b' letters, 'c' letters."""
    rng = np.random.default_rng(0)
    sources = {}
    for name, count in (("a", 12), ("b", 30), ("c", 6)):
        folder = tmp_path / name
        write(folder, {f"{i}.txt": name * int(rng.integers(20, 200)) for i in range(count)})
        sources[name] = str(folder)
    return sources


def test_mixture_shares_in_every_window_and_the_same_sequence_again(tmp_path):
    sources = mixture_corpus(tmp_path)
    weights = {"a": 0.5, "b": 0.3, "c": 0.2}
    data = text.load(mixture={name: dict(path=path, weight=weights[name])
                              for name, path in sources.items()}, seq_len=16,
                     validation_fraction=0.2, test_fraction=0)
    first_letter = data.train["inputs"][:, 0, 0]  # each row holds one source's letters
    rows = np.concatenate([data.order(3, epoch) for epoch in range(100)])
    assert len(data.order(3, 0)) == len(data.train["targets"])
    assert len(rows) >= 20_000
    letters = np.asarray([ord(name) for name in weights])
    for start in range(0, len(rows) - 10_000, 997):
        window = first_letter[rows[start:start + 10_000]]
        for letter, weight in zip(letters, weights.values()):
            assert abs(np.mean(window == letter) - weight) <= 0.01
    # A source's rows are all taken before any is taken again.
    c_rows = rows[first_letter[rows] == ord("c")][:np.sum(first_letter == ord("c"))]
    assert len(set(c_rows.tolist())) == len(c_rows)
    # A pure function of (seed, epoch): a resumed run, or another worker, reads the same rows.
    again = text.load(mixture={name: dict(path=path, weight=weights[name])
                               for name, path in sources.items()}, seq_len=16,
                      validation_fraction=0.2, test_fraction=0)
    np.testing.assert_array_equal(again.order(3, 7), data.order(3, 7))
    assert not np.array_equal(data.order(3, 7), data.order(4, 7))
    # Held-out rows of every source.
    held = set(data.validation["inputs"][..., 0].ravel().tolist())
    assert held - {0, 256} == set(letters.tolist())  # less padding and EOD


@pytest.mark.parametrize("mixture, message", [
    (dict(a=dict(path="A", weight=0)), r"mixture.a.weight=0: give each source a weight > 0"),
    (dict(a=dict(path="A", weight=-1.0)), r"weight=-1.0"),
    (dict(a=dict(path="A")), r"weight=None"),
    (dict(a=dict(weight=1.0)), r"mixture.a has no path"),
    (dict(a=dict(path="A", weight=1.0, wieght=2)), r"unknown field\(s\) wieght"),
])
def test_mixture_errors(tmp_path, mixture, message):
    sources = mixture_corpus(tmp_path)
    for source in mixture.values():
        if "path" in source:
            source["path"] = sources["a"]
    with pytest.raises(DataError, match=message):
        text.load(mixture=mixture)


def test_a_path_and_a_mixture_at_once_is_refused(tmp_path):
    sources = mixture_corpus(tmp_path)
    with pytest.raises(DataError, match="both a path and a mixture"):
        text.load(sources["a"], mixture=dict(b=dict(path=sources["b"], weight=1.0)))
