"""What a streamed data set holds, checked against the config before anything is written: a TFDS
split that does not exist or selects nothing, and a classifier with fewer outputs than the classes
a source knows it has. Through api.fit in this process (test_cli.py's catalogue has the in-memory
cases): one line, the workdir and the data untouched."""
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

from conftest import files
from datasets import DataError
from test_pipeline import BUILDER
from trainer import api
from trainer.errors import ConfigError

# A data set of TFDS's own format, 20 train and 10 test images with labels 0 to 9, prepared in a
# process of its own: one that imported the builder would construct it instead of reading the
# files (test_pipeline.py), and its class name differs from test_pipeline's for the same reason.
PREPARE = textwrap.dedent(BUILDER).replace("MnistSample", "TinyDigits") + textwrap.dedent("""
    import sys
    arrays = {split: (np.zeros((n, 28, 28, 1), np.uint8), np.arange(n) % 10)
              for split, n in (("train", 20), ("test", 10))}
    TinyDigits(arrays, data_dir=sys.argv[1], file_format="array_record").download_and_prepare()
""")
SPLITS = "its splits are train (20 examples), test (10 examples)."


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("streamed")
    subprocess.run([sys.executable, "-c", PREPARE, str(root / "tfds")], check=True,
                   capture_output=True)
    for split in ("train", "test"):  # an image folder of 3 classes
        for label in ("a", "b", "c"):
            (root / "images" / split / label).mkdir(parents=True)
            Image.new("L", (8, 8)).save(root / "images" / split / label / "0.png")
    return root


BAD = [
    ({"train_split": "train[:0%]"},
     f"config.dataset.train_split='train[:0%]' selects no examples: {SPLITS} Give one, a part in "
     f"TFDS's slice syntax ('train[:90%]', 'train[1000:]', 'train[-10%:]'), or parts joined by "
     f"'+'."),
    ({"test_split": "validation"},
     f"config.dataset.test_split='validation' is not a split of tiny_digits: {SPLITS}"),
    ({"train_split": "train[:5]+tset"},
     f"config.dataset.train_split='train[:5]+tset' names 'tset', not a split of tiny_digits: "
     f"{SPLITS}"),
    ({"train_split": "train[:200%]"},
     "config.dataset.train_split='train[:200%]' cannot be read as a split of tiny_digits (When "
     "unit=%, percent slice boundaries should be in [-100, 100]): its splits are"),
    ({"model": dict(features=(32, 5))},  # TFDS's ClassLabel says 10
     "config.model gives 5 outputs but the data set's labels go up to 9 (10 classes): a classifier "
     "needs an output for each class; pass model=dict(features=(32, 10))."),
    ({"name": "image_folder", "data_dir": "{root}/images", "tfds_data_dir": None,
      "model": dict(features=(32, 2))},
     "config.model gives 2 outputs but the data set's labels go up to 2 (3 classes)"),
]


@pytest.mark.parametrize("fields, message", BAD, ids=[m[:40] for _, m in BAD])
def test_streamed_data_that_cannot_train_is_one_line(fields, message, data, tmp_path):
    fields = {k: v.format(root=data) if isinstance(v, str) else v for k, v in fields.items()}
    model = fields.pop("model", dict(features=(32, 10)))
    dataset = {"name": "tfds:tiny_digits", "tfds_data_dir": str(data / "tfds"), **fields}
    before = files(data)
    with pytest.raises((ConfigError, DataError)) as raised:
        api.fit(None, tmp_path / "run", model=model, dataset=dataset,  # an MLP, as mnist_mlp's
                batch_size=2, eval_batch_size=2)
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert not (tmp_path / "run").exists() and files(data) == before
