"""Any prepared TFDS data set with image and label features, by name: `tfds:cifar10`,
`tfds:fashion_mnist`, ... (a name after the colon is looked up here, see __getattr__).

Read with `tfds.data_source` (ArrayRecord, random access): no TensorFlow. Splits take TFDS's
syntax (`train[:90%]`). The data set must be prepared in array_record format in `tfds_data_dir`
(or TFDS's default folder); preparing one needs TensorFlow and, for most, the network.
"""
import dataclasses
import functools
import glob
import importlib.util
import json
import os
import re

import numpy as np

from datasets import OPENING, DataError, Dataset, scale_to_unit


def prepared_builder(name, tfds_data_dir, ways=""):
    """TFDS's builder of a data set prepared in `tfds_data_dir`, or a DataError naming the folder
    looked in; `ways` says what else would do."""
    if importlib.util.find_spec("tensorflow_datasets") is None:
        raise DataError(f"{name} was not found: tensorflow_datasets is not installed. {ways}")
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    try:
        builder = tfds.builder(name, data_dir=tfds_data_dir)
    except Exception as e:  # pylint: disable=broad-except  (TFDS: not a known name, or damaged)
        damaged = unreadable_info(name, tfds_data_dir or tfds.core.constants.DATA_DIR)
        if damaged:
            raise DataError(f"{damaged} is damaged (not JSON): the data set {name} cannot be "
                            f"read. Prepare it again in that folder.") from e
        raise DataError(f"{name} is not a TFDS data set known here ({type(e).__name__}: "
                        f"{str(e).splitlines()[0]}). Check the name, or prepare it in "
                        f"config.dataset.tfds_data_dir. {ways}") from e
    if not builder.is_prepared():
        found = (f"{builder.data_dir} holds an incomplete copy (no dataset_info.json: a download "
                 f"cut short?); delete it." if os.path.isdir(builder.data_dir)
                 else f"{name} is not prepared in {builder.data_dir}.")
        raise DataError(f"{name} was not found: {found} {ways}".strip())
    return builder


def unreadable_info(name, data_dir):
    """The path of a prepared version's dataset_info.json that is not JSON, or None."""
    folder = os.path.join(os.path.expanduser(data_dir), re.split("[/:]", name)[0])
    for path in sorted(glob.glob(os.path.join(folder, "**", "dataset_info.json"), recursive=True)):
        try:
            with open(path, encoding="utf-8") as f:
                json.load(f)
        except (OSError, ValueError):
            return path
    return None


@dataclasses.dataclass
class TfdsSource:
    """One split of a prepared TFDS data set; each process opens its own data source."""
    name: str
    split: str
    tfds_data_dir: str | None
    image_key: str
    label_key: str
    num_classes: int | None = None  # the label feature's, where it is a ClassLabel
    length: int = 0

    def __post_init__(self):
        self.source = None
        self.length = len(self.open())

    def open(self):
        if self.source is None:  # every read asks: the lock only while it is not open yet
            with OPENING:
                if self.source is None:
                    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
                    self.source = tfds.data_source(self.name, split=self.split,
                                                   data_dir=self.tfds_data_dir, download=False)
        return self.source

    def __getstate__(self):
        return {**self.__dict__, "source": None}

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices):
        try:
            examples = self.open().__getitems__(indices)
        except Exception as e:  # pylint: disable=broad-except  (its files removed or changed)
            raise DataError(f"cannot read the TFDS data set {self.name} ({self.split}) in "
                            f"{self.tfds_data_dir or 'TFDS default folder'} "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}): its files "
                            f"were removed or changed since it was prepared? Prepare it "
                            f"again.") from e
        return [self.decoded(example) for example in examples]

    def decoded(self, example):
        return {"inputs": np.asarray(example[self.image_key], np.uint8),
                "targets": np.int32(example[self.label_key])}


def check_split(splits, name, field, split):
    """A DataError in our words where `split` names no split of the data set, is not TFDS's split
    syntax, or selects no examples: TFDS's own errors name none of the splits there are, and an
    empty selection fails only once read ("Paths sequence can not be of 0 length")."""
    try:
        count = splits[split].num_examples  # TFDS counts a slice without reading it
        problem = None if count > 0 else "selects no examples"
    except (KeyError, ValueError) as e:
        unknown = re.search(r"Unknown split '([^']*)'", str(e))
        cause = re.split(r"\. (?:Got|See format)", str(e).strip().splitlines()[-1])[0]
        problem = (f"cannot be read as a split of {name} ({cause})" if not unknown
                   else f"is not a split of {name}" if unknown[1] == split.strip()
                   else f"names {unknown[1]!r}, not a split of {name}")
    if problem:
        have = ", ".join(f"{s} ({info.num_examples} examples)" for s, info in splits.items())
        raise DataError(f"config.dataset.{field}={split!r} {problem}: its splits are {have}. Give "
                        f"one, a part in TFDS's slice syntax ('train[:90%]', 'train[1000:]', "
                        f"'train[-10%:]'), or parts joined by '+'.")


def load(name, train_split="train", test_split="test", validation_split=None, tfds_data_dir=None,
         image_key="image", label_key="label") -> Dataset:
    """`validation_split`: the split that chooses the model (a name, or a slice such as
    "train[90%:]" beside train_split="train[:90%]"); None: the data set's `validation` where it
    has one; "": none."""
    builder = prepared_builder(name, tfds_data_dir)
    features = builder.info.features
    for key in (image_key, label_key):
        if key not in features:
            raise DataError(f"the TFDS data set {name} has no feature {key!r}; its features are "
                            f"{sorted(features)}. Name them with config.dataset.image_key and "
                            f"label_key.")
    if validation_split is None:
        validation_split = "validation" if "validation" in builder.info.splits else ""
    named = {"train_split": train_split, "test_split": test_split,
             **({"validation_split": validation_split} if validation_split else {})}
    for field, split in named.items():
        check_split(builder.info.splits, name, field, split)
    num_classes = getattr(features[label_key], "num_classes", None)
    try:
        train, test, *validation = (
            TfdsSource(name, split, tfds_data_dir, image_key, label_key, num_classes)
            for split in named.values())
    except ValueError as e:  # TFDS's other refusals, as it words them
        raise DataError(f"config.dataset (tfds:{name}): {e}") from e
    return Dataset(train=train, test=test, validation=validation[0] if validation else None,
                   prepare_inputs=scale_to_unit)


def __getattr__(name):
    """`tfds:NAME` names the loader of the TFDS data set NAME."""
    if name.startswith("__"):
        raise AttributeError(name)
    return functools.partial(load, name)
