"""The diffusion family and the denoising autoencoder train on MNIST and CIFAR-10 from a local
root (issue 14): tiny files in the real on-disk formats, one short epoch through train.main,
the network built for the data's shape and its test metrics finite."""

from __future__ import annotations

import math
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from mlnotes_zoo.train import main
from mlnotes_zoo.weights import load_checkpoint


def _write_idx(path: Path, array: np.ndarray) -> None:
    # IDX: magic (0, 0, 0x08 = ubyte, ndim), big-endian uint32 dims, then the raw bytes.
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _mnist(root: Path) -> tuple[int, int]:
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("t10k", 12)):
        _write_idx(root / "MNIST" / "raw" / f"{split}-images-idx3-ubyte",
                   rng.integers(0, 256, (n, 28, 28)))
        _write_idx(root / "MNIST" / "raw" / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)
    return 1, 28


def _cifar10(root: Path) -> tuple[int, int]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            data = rng.integers(0, 256, (10, 3072), dtype=np.uint8)
            pickle.dump({"batch_label": name, "data": data, "labels": list(range(10))}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return 3, 32


TINY_NET = ["model.net.widths=[8,16]", "model.net.timesteps=100", "model.net.beta_end=0.2",
            "model.sample_steps=2", "model.num_pictures=4"]
SMALL = {
    "ddpm": [*TINY_NET, "model.inpaint_samples=1", "model.classifier_steps=5"],
    "ddpm_inpaint": [*TINY_NET, "model.inpaint_samples=1"],
    "dae": ["model.num_pictures=4"],
}


@pytest.mark.slow
@pytest.mark.parametrize("data, write", [("mnist", _mnist), ("cifar10", _cifar10)])
@pytest.mark.parametrize("model", sorted(SMALL))
def test_trains_on_real_formats(make_cfg, tmp_path, model, data, write):
    channels, size = write(tmp_path / "root")
    classifier = [f"model.classifier_dir={tmp_path / 'classifiers'}"] if model == "ddpm" else []
    cfg = make_cfg(f"model={model}", f"data={data}", f"data.root={tmp_path / 'root'}",
                   "data.val_size=8", "data.batch_size=8", *classifier, *SMALL[model])
    assert list(cfg.model.net.in_shape) == [channels, size, size]
    metrics = main(cfg)
    assert metrics and all(math.isfinite(v) for v in metrics.values()), metrics
    net = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert tuple(net.in_shape) == (channels, size, size)
