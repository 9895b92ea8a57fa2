"""The streaming pipeline: ArrayRecord shards, image folders and a TFDS data set, made here from the
real MNIST, train through Grain workers on the batches the in-memory path sees, resume bitwise
after SIGKILL whatever the worker count and leave no worker behind, and each process reads only its
own rows."""
import collections
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

import user_code
from conftest import MNIST_DIR, REPO, SUBSET, files, run_train
from configs.base import get_base_config
import datasets
from datasets import (ArraySource, DataError, Dataset, array_record, augment, examples,
                      image_folder, mnist, scale_to_unit)
from trainer import api, batching, input_pipeline, parts, setup
from trainer.errors import ConfigError

MLP = ["--config=configs/mnist_mlp.py", "--config.model.features=(32, 10)", "--config.plots=False",
       "--config.steps=per_step"]


def state_at(workdir, step):
    return ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")


def assert_same_params(a, b, step):
    same = jax.tree.map(np.array_equal, state_at(a, step)["params"], state_at(b, step)["params"])
    assert jax.tree.all(same)


def accuracy(workdir):
    return json.loads((workdir / "results.json").read_text())["test/accuracy"]


def prepare(*args, exit_code=0):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_data.py"), *args],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == exit_code, result.stderr[-3000:]
    return result.stderr


@pytest.fixture(scope="module")
def mnist_records(tmp_path_factory):
    """All of MNIST as ArrayRecord shards, written by scripts/prepare_data.py."""
    out = tmp_path_factory.mktemp("records") / "mnist"
    prepare(f"--from_mnist={MNIST_DIR}", f"--out={out}")
    return out


def test_streamed_records_are_the_in_memory_batches(mnist_records, tmp_path):
    """ArrayRecord through Grain workers against the IDX files in memory: the same batches, so the
    same parameters to the bit, and the same accuracy."""
    common = [*MLP, "--config.num_steps=200", "--config.checkpoint_every_steps=200"]
    in_memory, streamed = tmp_path / "in_memory", tmp_path / "streamed"
    assert run_train(*common, f"--config.dataset.data_dir={MNIST_DIR}",
                     f"--workdir={in_memory}").returncode == 0
    result = run_train(*common, "--config.dataset.name=array_record",
                       f"--config.dataset.data_dir={mnist_records}", "--config.pipeline.workers=2",
                       f"--workdir={streamed}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_params(in_memory, streamed, 200)
    assert accuracy(in_memory) == accuracy(streamed) > 0.85


USER_CODE = {  # a user's data set and transform, kept outside the checkout
    "mnist_subset.py": """
        import numpy as np
        from datasets import Dataset, mnist

        def load(data_dir, num_train=NUM_TRAIN, num_test=NUM_TEST):
            '''The first images of each MNIST split in memory, in the image folder's order: by
            class folder (the label), then by file name (the index).'''
            data = mnist.load(data_dir=data_dir)

            def first(split, n):
                order = np.argsort(split["targets"][:n], kind="stable")
                return {name: array[:n][order] for name, array in split.items()}

            return Dataset(first(data.train, num_train), first(data.test, num_test),
                           prepare_inputs=data.prepare_inputs)
    """.replace("NUM_TRAIN", str(SUBSET["train"])).replace("NUM_TEST", str(SUBSET["test"])),
    "my_transforms.py": """
        import os

        def invert_half(example, rng):
            '''Inverts an image on a coin drawn from the example's own generator; notes each call
            (1: inverted, 0: not) in $TRANSFORM_LOG where that is set.'''
            inverted = rng.random() < 0.5
            if os.environ.get("TRANSFORM_LOG"):
                with open(os.environ["TRANSFORM_LOG"], "a") as f:
                    f.write(str(int(inverted)))
            return {**example, "inputs": 255 - example["inputs"]} if inverted else example
    """,
}


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory):
    return user_code.write(tmp_path_factory.mktemp("user_code"), USER_CODE)


SUBSET_RUN = [*MLP, "--config.num_steps=150", "--config.batch_size=32",
              "--config.checkpoint_every_steps=150"]


@pytest.fixture(scope="module")
def in_memory_subset(user_folder, tmp_path_factory):
    """The image folder's images as in-memory arrays (a user's data set), trained per step."""
    workdir = tmp_path_factory.mktemp("in_memory_subset")
    result = run_train(*SUBSET_RUN, "--config.dataset.name=mnist_subset",
                       f"--config.dataset.data_dir={MNIST_DIR}", f"--workdir={workdir}",
                       env={"PYTHONPATH": str(user_folder)})
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_an_image_folder_trains_and_converts_to_the_same_records(mnist_folder, in_memory_subset,
                                                                 tmp_path):
    """The PNG folder streamed against the same images in memory: PNG is lossless, so the same
    batches for the same seed, the same parameters to the bit and the same accuracy. The ArrayRecord
    shards converted from it hold the same examples in the same order (records train as memory
    does: test_streamed_records_are_the_in_memory_batches)."""
    records = tmp_path / "records"
    prepare(f"--from_images={mnist_folder}", f"--out={records}", "--shards=2")
    folder, converted = image_folder.load(str(mnist_folder)), array_record.load(str(records))
    for split in ("train", "test"):
        everything = np.arange(SUBSET[split])
        expected = examples(getattr(folder, split), everything)
        found = examples(getattr(converted, split), everything)
        assert all(np.array_equal(expected[k], found[k]) for k in ("inputs", "targets")), split
    workdir = tmp_path / "image_folder"
    result = run_train(*SUBSET_RUN, "--config.dataset.name=image_folder",
                       f"--config.dataset.data_dir={mnist_folder}", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-3000:]
    # 1800: mnist_mlp holds out a tenth of the 2000 for validation
    assert (f"Training batches are streamed from image_folder in {mnist_folder} (1800 examples), "
            f"read by {input_pipeline.default_workers()} worker process(es).") in result.stderr
    evaluated = subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate.py"),
                                f"--workdir={workdir}"], capture_output=True, text=True, cwd=REPO)
    assert evaluated.returncode == 0 and "leaked" not in evaluated.stderr, evaluated.stderr
    assert_same_params(in_memory_subset, workdir, 150)
    assert accuracy(in_memory_subset) == accuracy(workdir) > 0.8


def test_a_users_transform_changes_what_the_model_sees_whatever_the_workers(
        user_folder, in_memory_subset, tmp_path, monkeypatch):
    """--config.augment.transform=module:function of a user's: it sees every training example once,
    its coin comes from (seed, epoch, index), so 0 and 1 workers train to the same bits, and those
    differ from the same run without it."""
    monkeypatch.syspath_prepend(str(user_folder))
    transform = parts.find(parts.TRANSFORM, "my_transforms:invert_half")
    rng = np.random.default_rng(0)
    split = {"inputs": rng.integers(0, 255, (32, 4, 4, 1)).astype(np.uint8),
             "targets": np.arange(32, dtype=np.int32)}
    order = dict(seed=5, batch_size=8, steps_per_epoch=4, process_index=0, process_count=1)
    batches = input_pipeline.train_batches(ArraySource(split), 0, 6, workers=0, buffer=2,
                                           augment=augment.Augment(transform=transform), **order)
    for step, batch in enumerate(batches):  # what reaches the model: each image, or 255 - it
        epoch, indices = batching.train_indices(step, num_examples=32, **order)
        coins = [np.random.default_rng([5, epoch, i]).random() < 0.5 for i in indices]
        expected = [255 - split["inputs"][i] if coin else split["inputs"][i]
                    for i, coin in zip(indices, coins)]
        assert np.array_equal(batch["inputs"], np.stack(expected))
        assert np.array_equal(batch["targets"], indices)
    assert step == 5

    for workers in (0, 1):
        log = tmp_path / f"calls-{workers}"
        result = run_train(*SUBSET_RUN, "--config.dataset.name=mnist_subset",
                           f"--config.dataset.data_dir={MNIST_DIR}",
                           "--config.augment.transform=my_transforms:invert_half",
                           f"--config.pipeline.workers={workers}",
                           f"--workdir={tmp_path / str(workers)}",
                           env={"PYTHONPATH": str(user_folder), "TRANSFORM_LOG": str(log)})
        assert result.returncode == 0, result.stderr[-3000:]
        calls = log.read_text()
        assert len(calls) == 150 * 32 and 0.45 < calls.count("1") / len(calls) < 0.55
    assert_same_params(tmp_path / "0", tmp_path / "1", 150)
    plain, inverted = (state_at(w, 150)["params"] for w in (in_memory_subset, tmp_path / "0"))
    assert not any(jax.tree.leaves(jax.tree.map(np.array_equal, plain, inverted)))


def test_mean_and_std_normalise_on_the_device():
    """config.augment.mean and std: (x / 255 - mean) / std per channel, in the jitted step; one
    value of each is for every channel; none leaves the data set as it is."""
    images = np.random.default_rng(0).integers(0, 256, (4, 5, 5, 3)).astype(np.uint8)
    split = {"inputs": images, "targets": np.zeros(4, np.int32)}
    data = Dataset(train=split, test=split, prepare_inputs=scale_to_unit)
    for mean, std in (((0.49, 0.48, 0.45), (0.25, 0.24, 0.26)), ((0.5,), (0.2,))):
        config = ml_collections.ConfigDict(dict(mean=mean, std=std))
        on_device = jax.jit(setup.with_normalization(data, config).prepare_inputs)(images)
        expected = (images / 255 - np.float64(mean)) / np.float64(std)  # exact, |.| <= 2.5
        assert on_device.dtype == np.float32 and on_device.shape == images.shape
        # A few float32 rounding steps, no more: XLA divides by a constant as a multiplication by
        # its reciprocal (so does scale_to_unit), which NumPy's float32 division does not copy.
        np.testing.assert_allclose(np.asarray(on_device), expected, rtol=0, atol=1e-6)
    assert setup.with_normalization(data, ml_collections.ConfigDict(dict(mean=(), std=()))) is data


BAD_NORMALIZATION = [
    ({"augment.mean": (0.5, 0.5), "augment.std": (0.25,)},
     "config.augment.mean has 2 values and std 1; give one of each per channel (or neither)."),
    ({"augment.mean": (0.5, 0.5, 0.5), "augment.std": (0.25, 0.25, 0.25)},
     "config.augment.mean has 3 values; the images have 1 channels."),
    ({"augment.mean": (0.5,), "augment.std": (0.0,)},
     "config.augment.std=(0.0,): every value must be > 0."),
]


@pytest.mark.parametrize("overrides, message", BAD_NORMALIZATION, ids=["lengths", "channels",
                                                                        "std"])
def test_bad_mean_or_std_gives_one_line_and_writes_nothing(overrides, message, tmp_path):
    with pytest.raises(ConfigError) as raised:
        api.fit("configs/mnist_mlp.py", tmp_path / "run", dataset=dict(data_dir=str(MNIST_DIR)),
                **overrides)
    assert str(raised.value) == message
    assert not (tmp_path / "run").exists()


def test_dataset_fields_left_none_are_not_passed():
    """config.dataset declares the fields of the data sets that ship (image_key and label_key are
    TFDS's), so that the command line can set them; a field left None is not passed, so a loader
    that takes none of them (xor) is built as before."""
    config = get_base_config().dataset
    assert config.image_key is None and config.label_key is None
    config.name = "xor"
    assert setup.build_dataset(config).num_train == 4
    config.image_key = "image"
    with pytest.raises(ConfigError, match="config.dataset.image_key is not an argument"):
        setup.build_dataset(config)


BUILDER = """
    import io
    import numpy as np
    import tensorflow_datasets as tfds
    from PIL import Image

    def png(image):
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0]).save(buffer, format="PNG")
        return buffer.getvalue()

    class MnistSample(tfds.core.GeneratorBasedBuilder):
        '''The first images of MNIST in TFDS's own format. TFDS encodes Image features with
        TensorFlow, so they are handed over already encoded, by Pillow: no TensorFlow.'''
        VERSION = tfds.core.Version("1.0.0")

        def __init__(self, arrays, **kwargs):
            self.arrays = arrays
            super().__init__(**kwargs)

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(28, 28, 1)),
                "label": tfds.features.ClassLabel(num_classes=10)}))

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in self.arrays}

        def _generate_examples(self, split):
            images, labels = self.arrays[split]
            for i, (image, label) in enumerate(zip(images, labels)):
                yield i, {"image": png(image), "label": int(label)}
"""


@pytest.fixture(scope="module")
def tfds_folder(tmp_path_factory):
    """A prepared TFDS data set, `mnist_sample`, written by TFDS's builder."""
    root = tmp_path_factory.mktemp("tfds")
    (root / "builder.py").write_text(textwrap.dedent(BUILDER))
    data = mnist.load(data_dir=str(MNIST_DIR))
    arrays = {split: (getattr(data, split)["inputs"][:n], getattr(data, split)["targets"][:n])
              for split, n in SUBSET.items()}
    sys.path.insert(0, str(root))
    try:
        import builder  # pylint: disable=import-outside-toplevel,import-error
        builder.MnistSample(arrays, data_dir=str(root / "data"),
                            file_format="array_record").download_and_prepare()
    finally:
        sys.path.remove(str(root))
    return root / "data"


def test_a_prepared_tfds_data_set_by_name_with_split_syntax(tfds_folder, tmp_path):
    """A slice of train as the validation split, the data set's own: carving one too is one
    line."""
    tfds_run = [*MLP, "--config.dataset.name=tfds:mnist_sample", "--config.batch_size=32",
                f"--config.dataset.tfds_data_dir={tfds_folder}", "--config.num_epochs=3",
                "--config.dataset.train_split=train[:90%]",
                "--config.dataset.validation_split=train[90%:]",
                "--config.dataset.image_key=image", "--config.dataset.label_key=label"]
    both = run_train(*tfds_run, f"--workdir={tmp_path / 'both'}")
    assert both.returncode == 2 and not (tmp_path / "both").exists()
    assert both.stderr.strip() == (
        "error: config.validation.fraction=0.1: the data set has a validation split of its own; "
        "carve none (--config.validation.fraction=0.0) and its own is used.")
    result = run_train(*tfds_run, "--config.validation.fraction=0", f"--workdir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "56 steps an epoch of batch 32" in result.stderr  # 1800 of the 2000 examples
    assert json.loads((tmp_path / "validation_split.json").read_text()) == {
        "examples": 200, "the data set's own": True}
    assert accuracy(tmp_path) > 0.8


AUGMENTED = [*MLP, "--config.dataset.name=array_record", "--config.augment.crop_padding=2",
             "--config.augment.flip=True", "--config.num_steps=60", "--config.log_every_steps=10",
             "--config.checkpoint_every_steps=20", "--config.eval_every_epochs=0"]


@pytest.fixture(scope="module")
def augmented_run(mnist_records, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("augmented")
    result = run_train(*AUGMENTED, f"--config.dataset.data_dir={mnist_records}",
                       "--config.pipeline.workers=2", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_sigkill_while_streaming_then_resume_is_bitwise(mnist_records, augmented_run, tmp_path):
    """Augmentation is drawn from (seed, epoch, index): neither the restart nor the number of
    workers (2 killed, 1 resumed; 0 in test_worker_count_changes_no_batch) changes a bit."""
    command = [sys.executable, str(REPO / "scripts" / "train.py"), *AUGMENTED,
               f"--config.dataset.data_dir={mnist_records}", f"--workdir={tmp_path}"]
    run = subprocess.Popen([*command, "--config.pipeline.workers=2"], cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while run.poll() is None and time.time() < deadline and not (
            tmp_path / "checkpoints" / "20").is_dir():
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL
    resumed = subprocess.run([*command, "--config.pipeline.workers=1"],
                             capture_output=True, text=True, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from the checkpoint at step" in resumed.stderr
    for part in ("params", "opt_state"):
        same = jax.tree.map(np.array_equal, state_at(augmented_run, 60)[part],
                            state_at(tmp_path, 60)[part])
        assert jax.tree.all(same), part


def children(pid):
    """{/proc folder: (command line, niceness)} of the processes `pid` started through
    multiprocessing (Grain's workers, their resource tracker)."""
    found = {}
    for folder in pathlib.Path("/proc").glob("[0-9]*"):
        try:
            stat = (folder / "stat").read_text().rsplit(")", 1)[1].split()
            command = (folder / "cmdline").read_bytes()
        except OSError:  # ended meanwhile
            continue
        if int(stat[1]) == pid and b"multiprocessing" in command:
            found[folder] = command, int(stat[16])
    return found


def running(processes):
    """Those still running: a process that ended is gone, or a zombie with no command line."""
    def command(folder):
        try:
            return (folder / "cmdline").read_bytes()
        except OSError:
            return b""
    return [folder for folder, (was, _) in processes.items() if command(folder) == was]


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the workers in /proc")
def test_workers_end_with_a_sigkilled_trainer(mnist_records, tmp_path):
    """Grain stops its workers only from the trainer: killed, it would leave them running for
    ever, holding its stdout and stderr open (a test reading them would wait for ever too)."""
    run = subprocess.Popen([sys.executable, str(REPO / "scripts" / "train.py"), *MLP,
                            "--config.dataset.name=array_record", "--config.pipeline.workers=2",
                            f"--config.dataset.data_dir={mnist_records}", "--config.num_steps=10000",
                            "--config.eval_every_epochs=0", f"--workdir={tmp_path}"],
                           cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = min(os.nice(0) + 10, 19)  # a worker lowers its priority first thing (start_worker)
    deadline = time.time() + 120
    while run.poll() is None and time.time() < deadline:
        workers = children(run.pid)
        if [nice for command, nice in workers.values() if b"spawn_main" in command] == [started] * 2:
            break
        time.sleep(0.05)
    run.kill()
    assert run.wait() == -signal.SIGKILL
    assert sum(b"spawn_main" in command for command, _ in workers.values()) == 2, workers
    deadline = time.time() + 10
    while running(workers) and time.time() < deadline:
        time.sleep(0.05)
    assert not running(workers)


def test_worker_count_changes_no_batch():
    """The pipeline alone: 0 and 2 workers give the same augmented batches, and a stream begun
    mid-epoch (a resume) continues the uninterrupted one."""
    rng = np.random.default_rng(0)
    split = {"inputs": rng.integers(0, 255, (64, 8, 8, 1)).astype(np.uint8),
             "targets": np.arange(64, dtype=np.int32)}
    order = dict(seed=3, batch_size=8, steps_per_epoch=8, process_index=0, process_count=1)
    flip_crop = augment.Augment(crop_padding=2, flip=True)

    def stream(start, workers):
        batches = input_pipeline.train_batches(ArraySource(split), start, 20, augment=flip_crop,
                                               workers=workers, buffer=2, **order)
        return [b["inputs"] for b in batches]

    in_process, two_workers, resumed = stream(0, 0), stream(0, 2), stream(11, 0)
    assert len(in_process) == 20
    assert all(np.array_equal(a, b) for a, b in zip(in_process, two_workers))
    assert all(np.array_equal(a, b) for a, b in zip(in_process[11:], resumed))
    plain = batching.train_indices(0, num_examples=64, **order)[1]
    assert not all(np.array_equal(split["inputs"][i], x) for i, x in zip(plain, in_process[0]))


COUNTING = """
    import os
    import jax
    import numpy as np
    from datasets import ArraySource, Dataset, scale_to_unit

    class Counted(ArraySource):
        '''Notes each example read, with the JAX process that read it (workers inherit it).'''
        def __init__(self, split, log):
            super().__init__(split)
            object.__setattr__(self, "log", log)

        def __getitem__(self, index):
            with open(self.log, "a") as f:
                f.write(f"{os.getpid()} {index}\\n")
            return super().__getitem__(index)

    def load(data_dir, size=512):
        rng = np.random.default_rng(0)
        def split(n):
            return {"inputs": rng.integers(0, 255, (n, 8, 8, 1)).astype(np.uint8),
                    "targets": rng.integers(0, 4, n).astype(np.int32)}
        where = os.path.join(data_dir, f"reads-{jax.process_index()}")
        return Dataset(Counted(split(size), where + "-train"), Counted(split(256), where + "-test"),
                       prepare_inputs=scale_to_unit)
"""


def free_port():
    import socket  # pylint: disable=import-outside-toplevel
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_each_process_reads_only_its_own_rows(tmp_path):
    (tmp_path / "counting.py").write_text(textwrap.dedent(COUNTING))
    args = [sys.executable, str(REPO / "scripts" / "train.py"), *MLP, "--config.batch_size=64",
            "--config.eval_batch_size=64", "--config.num_steps=6", "--config.log_every_steps=3",
            "--config.dataset.name=counting", f"--config.dataset.data_dir={tmp_path}",
            f"--coordinator_address=127.0.0.1:{free_port()}", "--num_processes=2",
            f"--workdir={tmp_path / 'run'}"]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "PYTHONPATH": str(tmp_path)}
    runs = [subprocess.Popen([*args, f"--process_id={i}"], cwd=REPO, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in (0, 1)]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    read = {}  # (process, split, by the trainer's own process or by a worker): indices read
    for p, run in enumerate(runs):
        for split in ("train", "test"):
            for line in (tmp_path / f"reads-{p}-{split}").read_text().splitlines():
                pid, index = map(int, line.split())
                read.setdefault((p, split, pid == run.pid), []).append(index)
    # mnist_mlp holds out a tenth of train for validation: training reads the rest, by position.
    held = datasets.validation_indices(512, 0.1, 0)
    kept = np.setdiff1d(np.arange(512), held)
    order = dict(seed=0, num_examples=len(kept), batch_size=64, steps_per_epoch=7,
                 process_count=2)
    validated = []
    for p in (0, 1):
        assert read[p, "train", True] == [kept[0]]  # once, for the shape of the inputs
        own = [kept[i] for step in range(6)  # its 32 rows of each of the 6 global batches
               for i in batching.train_indices(step, process_index=p, **order)[1]]
        rest = collections.Counter(read[p, "train", False]) - collections.Counter(own)
        assert sum(rest.values()) == len(read[p, "train", False]) - len(own)  # every one read
        validated += list(rest.elements())  # and its rows of the validation split, no more
    assert sorted(set(validated)) == sorted(held)  # each, in one process or the other
    assert len(validated) == 64  # and no more: one eval batch, its padding rows read to fill it
    assert sorted(read[0, "test", False] + read[1, "test", False]) == list(range(256))  # once each


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory, mnist_folder):
    root = tmp_path_factory.mktemp("bad_data")
    for case in ("empty_class", "unreadable"):
        for split in ("train", "test"):
            for label in ("0", "1"):
                folder = root / case / split / label
                folder.mkdir(parents=True)
                for png in sorted((mnist_folder / split / label).iterdir())[:3]:
                    (folder / png.name).write_bytes(png.read_bytes())
    for png in (root / "empty_class" / "train" / "1").iterdir():
        png.unlink()
    (root / "unreadable" / "test" / "0" / "broken.png").write_bytes(b"no image at all")
    return root


BAD_DATA = [
    ({"name": "image_folder", "data_dir": "{root}/nowhere"},
     "config.dataset.data_dir='{root}/nowhere' is not a folder"),
    ({"name": "image_folder", "data_dir": "{root}/empty_class"},
     "the class folder {root}/empty_class/train/1 holds no images"),
    ({"name": "image_folder", "data_dir": "{root}/unreadable"},
     "cannot read the image {root}/unreadable/test/0/broken.png"),
    ({"name": "array_record", "data_dir": "{root}"},
     "no ArrayRecord shards train-*.array_record in config.dataset.data_dir='{root}'"),
    ({"name": "tfds:cifar10", "tfds_data_dir": "{root}"},
     "cifar10 was not found: cifar10 is not prepared in {root}/cifar10/"),
    ({"name": "tfds:mnist_sample", "tfds_data_dir": "{tfds}", "test_split": "validation"},
     "config.dataset.test_split='validation' is not a split of mnist_sample"),
    ({"name": "tfds:mnist_sample", "tfds_data_dir": "{tfds}", "image_key": "picture"},
     "the TFDS data set mnist_sample has no feature 'picture'; its features are "
     "['image', 'label']"),
    ({"name": "tfds:mnist_sample", "tfds_data_dir": "{root}/damaged_tfds"},
     "{root}/damaged_tfds/mnist_sample/1.0.0/dataset_info.json is damaged (not JSON): the data set "
     "mnist_sample cannot be read. Prepare it again in that folder."),
]


@pytest.mark.parametrize("fields, message", BAD_DATA, ids=[str(f) for f, _ in BAD_DATA])
def test_bad_data_gives_one_line_and_writes_nothing(fields, message, bad_data, tfds_folder,
                                                    tmp_path):
    """Through api.fit in this process: the command line says the same line (test_cli.py)."""
    if "damaged_tfds" in fields.get("tfds_data_dir", ""):  # a copy whose dataset_info.json is cut
        shutil.copytree(tfds_folder, bad_data / "damaged_tfds", dirs_exist_ok=True)
        (info,) = (bad_data / "damaged_tfds").rglob("dataset_info.json")
        info.write_text(info.read_text()[:100])
    # This process imported the builder that prepared tfds_folder, which TFDS now prefers to its
    # files: those cases read it as a user's process does, on the command line.
    from_builder = "{tfds}" in fields.get("tfds_data_dir", "")
    fields = {k: v.format(root=bad_data, tfds=tfds_folder) for k, v in fields.items()}
    before = files(bad_data)
    if from_builder:
        result = run_train(*MLP, *(f"--config.dataset.{k}={v}" for k, v in fields.items()),
                           f"--workdir={tmp_path / 'run'}")
        assert result.returncode == 2
        error = result.stderr.strip().removeprefix("error: ")
    else:
        with pytest.raises(DataError) as raised:
            api.fit("configs/mnist_mlp.py", tmp_path / "run", model=dict(features=(32, 10)),
                    dataset=fields)
        error = str(raised.value)
    assert message.format(root=bad_data) in error and "\n" not in error
    assert not (tmp_path / "run").exists() and files(bad_data) == before


def test_records_and_image_folders_decode_to_what_was_written(mnist_folder, tmp_path):
    data = image_folder.load(str(mnist_folder))
    example = data.train[0]
    first = sorted((mnist_folder / "train" / "0").iterdir())[0]
    assert example["inputs"].shape == (28, 28, 1) and example["inputs"].dtype == np.uint8
    assert np.array_equal(example["inputs"][..., 0], np.asarray(Image.open(first)))
    assert int(example["targets"]) == 0
    record = array_record.encode(first.read_bytes(), 0)
    assert np.array_equal(array_record.decode(record, channels=1)["inputs"], example["inputs"])


def test_raw_records_hold_the_pixels_as_they_are(mnist_folder, tmp_path):
    """--encoding=raw: the same examples as the IDX files and the image folder, nothing to decode."""
    prepare(f"--from_mnist={MNIST_DIR}", f"--out={tmp_path / 'mnist'}", "--encoding=raw")
    prepare(f"--from_images={mnist_folder}", f"--out={tmp_path / 'folder'}", "--encoding=raw")
    idx, folder = mnist.load(data_dir=str(MNIST_DIR)), image_folder.load(str(mnist_folder))
    folder_splits = [{"inputs": np.stack([s[i]["inputs"] for i in range(len(s))]),
                      "targets": np.array([s[i]["targets"] for i in range(len(s))])}
                     for s in (folder.train, folder.test)]
    expected = {"mnist": (idx.train, idx.test), "folder": folder_splits}
    for name, splits in expected.items():
        records = array_record.load(str(tmp_path / name))
        for split, source in zip(splits, (records.train, records.test)):
            assert len(source) == len(split["targets"])
            rows = list(range(0, len(source), 7))
            read = source.__getitems__(rows)
            assert np.array_equal(np.stack([r["inputs"] for r in read]), split["inputs"][rows])
            assert np.array_equal([r["targets"] for r in read], split["targets"][rows])
    # Refused, as every script refuses bad input: one line, exit 2, nothing written.
    message = prepare(f"--from_mnist={MNIST_DIR}", f"--out={tmp_path / 'mnist'}", exit_code=2)
    assert message.strip() == f"error: --out={tmp_path / 'mnist'} exists; give a new folder " \
                              f"(nothing was written)."
    message = prepare(f"--from_mnist={tmp_path / 'nowhere'}", f"--out={tmp_path / 'new'}",
                      exit_code=2)
    assert len(message.strip().splitlines()) == 1 and not (tmp_path / "new").exists()
