"""The published-protocol experiments (README "Published protocols (not run here)"): each
``experiment=`` config composes with the protocol's settings and trains end to end through
``train.main`` on tiny files in its dataset's real on-disk format, shrunk by overrides."""

from __future__ import annotations

import math
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile
from hydra.utils import instantiate
from PIL import Image

from mlnotes_zoo.train import main

# -- tiny files in the real formats (as tests/data/ writes them) -------------------------------


def _write_idx(path: Path, array: np.ndarray) -> None:
    # IDX: magic (0, 0, 0x08 = ubyte, ndim), big-endian uint32 dims, then the raw bytes.
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    path.write_bytes(header + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


def _write_mnist(root: Path, n_train: int = 40, n_test: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(root / "MNIST" / "raw" / f"{split}-images-idx3-ubyte",
                   rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx(root / "MNIST" / "raw" / f"{split}-labels-idx1-ubyte",
                   rng.integers(0, 10, (n,), dtype=np.uint8))
    return root


def _write_cifar10(root: Path, per_batch: int = 10) -> Path:
    # The python release: pickled dicts {"data": (N, 3072) uint8, "labels": [...]}; every
    # batch holds every class (the few-label evaluation draws labels per class).
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data,
                         "labels": [i % 10 for i in range(per_batch)]}, f)
    return root


def _write_librispeech(root: Path) -> Path:
    # <root>/LibriSpeech/<subset>/<speaker>/<chapter>/{<id>.flac, <speaker>-<chapter>.trans.txt}
    texts = ["HELLO WORLD", "IT'S A TEST", "A B C", "GOOD DAY"]
    for subset in ("train-clean-100", "dev-clean", "test-clean"):
        folder = root / "LibriSpeech" / subset / "19" / "198"
        folder.mkdir(parents=True)
        lines = []
        for i, text in enumerate(texts):
            t = np.arange(int(16000 * (0.8 + 0.1 * i))) / 16000
            wave = 0.3 * np.sin(2 * math.pi * (300 + 100 * i) * t).astype(np.float32)
            soundfile.write(folder / f"19-198-{i:04d}.flac", wave, 16000)
            lines.append(f"19-198-{i:04d} {text}\n")
        (folder / "19-198.trans.txt").write_text("".join(lines))
    return root


def _write_penn_fudan(root: Path, n: int = 6) -> Path:
    # PNGImages/<x>.png (RGB) + PedMasks/<x>_mask.png (0 background, 1..K one id per person)
    (root / "PNGImages").mkdir(parents=True)
    (root / "PedMasks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        ids = np.zeros((48, 64), np.uint8)
        ids[5:40, 4 + i:20 + i] = 1  # two tall "pedestrians"
        ids[10:45, 34:50 - i] = 2
        image[ids > 0] //= 3
        Image.fromarray(image).save(root / "PNGImages" / f"FudanPed{i:05d}.png")
        Image.fromarray(ids).save(root / "PedMasks" / f"FudanPed{i:05d}_mask.png")
    return root


def _finite(metrics: dict, *names: str) -> None:
    for name in names:
        assert name in metrics and math.isfinite(metrics[name]), (name, sorted(metrics))


# -- the experiments ---------------------------------------------------------------------------


def test_vae_binarized_mnist_trains_on_binary_pixels_and_reports_iwae_nll(make_cfg, tmp_path):
    root = _write_mnist(tmp_path / "data")
    cfg = make_cfg("experiment=vae_binarized_mnist", f"data.root={root}")
    assert cfg.model.iwae_samples == 5000 and cfg.data.binarize == "dynamic"
    assert (cfg.model.net.latent_dim, cfg.model.net.hidden) == (50, 200)
    cfg = make_cfg("experiment=vae_binarized_mnist", f"data.root={root}", "data.val_size=8",
                   "data.batch_size=8", "model.net.hidden=16", "model.net.latent_dim=4",
                   "model.iwae_samples=8", "trainer.max_epochs=1")
    data = instantiate(cfg.data)
    data.setup("fit")
    x = next(iter(data.train_dataloader()))[0]
    assert set(x.unique().tolist()) <= {0.0, 1.0}  # Bernoulli draws, not grey levels
    metrics = main(cfg)
    _finite(metrics, "test/nll_iwae", "test/elbo")
    # IWAE_k ≥ ELBO in expectation: the NLL bound sits at or below −ELBO (up to sampling noise)
    assert 0 < metrics["test/nll_iwae"] <= -metrics["test/elbo"] + 5.0


@pytest.mark.parametrize("experiment, data, net", [
    ("glow_mnist", "mnist", ["model.net.depth=1", "model.net.hidden=8"]),
    ("glow_cifar10", "cifar10", ["model.net.depth=1", "model.net.hidden=8"]),
    ("realnvp_cifar10", "cifar10", ["model.net.num_couplings=1", "model.net.hidden=8"]),
])
def test_flow_experiments_report_bits_per_dim_on_8_bit_pixels(make_cfg, tmp_path, experiment,
                                                              data, net):
    writer = {"mnist": _write_mnist, "cifar10": _write_cifar10}[data]
    root = writer(tmp_path / "data")
    cfg = make_cfg(f"experiment={experiment}", f"data.root={root}", "data.val_size=8",
                   "data.batch_size=8", "model.gaussian_baseline=false", "model.num_pictures=4",
                   "trainer.max_epochs=1", *net)
    assert cfg.model.levels == 256
    metrics = main(cfg)
    _finite(metrics, "test/bpd", "test/nll")
    # bits/dim of 8-bit pixels (levels 256): positive, and a one-batch flow on uniform-noise
    # images stays within a few bits of the 8 that a uniform model scores on them
    assert 0 < metrics["test/bpd"] < 30


def test_simclr_cifar10_reports_knn_accuracy_with_k_200(make_cfg, tmp_path):
    root = _write_cifar10(tmp_path / "data")
    cfg = make_cfg("experiment=simclr_cifar10", f"data.root={root}", "data.val_size=10",
                   "data.batch_size=8", "model.net.widths=[8,16]", "model.net.blocks_per_stage=1",
                   "model.net.proj_hidden=16", "model.net.proj_dim=8", "model.labels_per_class=1",
                   "model.few_shot_draws=1", "model.num_pictures=4", "trainer.max_epochs=1")
    assert cfg.model.knn_k == 200 and cfg.data.batch_size == 8
    metrics = main(cfg)
    _finite(metrics, "test/knn_acc", "test/probe_acc", "test/loss")
    assert 0 <= metrics["test/knn_acc"] <= 1


def test_ctc_librispeech_trains_a_conformer_on_flac_files(make_cfg, tmp_path):
    root = _write_librispeech(tmp_path / "data")
    cfg = make_cfg("experiment=ctc_librispeech", f"data.root={root}", "data.batch_size=2",
                   "data.num_workers=0", "model.net.dim=16", "model.net.num_heads=2",
                   "model.net.ffn_dim=32", "model.net.num_layers=1", "model.net.conv_channels=4",
                   "model.beam_width=2", "trainer.max_epochs=1")
    assert cfg.model.net.name == "conformer_ctc" and cfg.model.net.n_mels == 80
    metrics = main(cfg)
    _finite(metrics, "test/cer", "test/wer", "test/loss")
    assert metrics["test/cer"] >= 0 and 0 <= metrics["test/wer"] <= 1


def test_mask_rcnn_penn_fudan_reports_box_and_mask_map(make_cfg, tmp_path):
    root = _write_penn_fudan(tmp_path / "data" / "PennFudanPed")
    cfg = make_cfg("experiment=mask_rcnn_penn_fudan", f"data.root={root}", "data.val_size=1",
                   "data.test_size=1", "data.image_size=64", "data.num_workers=0",
                   "model.net.backbone_stem_channels=8",
                   "model.net.backbone_stage_channels=[8,8,8,8]",
                   "model.net.backbone_stage_blocks=[1,1,1,1]", "model.net.backbone_out_channels=8",
                   "model.net.box_representation_size=16", "model.net.mask_layers=[8]",
                   "model.net.mask_dim_reduced=8", "model.num_pictures=2", "trainer.max_epochs=1")
    assert cfg.model.net.name == "mask_rcnn" and cfg.model.optimizer._target_ == "torch.optim.SGD"
    metrics = main(cfg)
    _finite(metrics, "test/loss", "test/loss_mask")
    assert {"test/box_map", "test/box_map_50", "test/mask_map", "test/mask_map_50"} <= set(metrics)


def test_every_published_protocol_experiment_is_tested_here():
    from mlnotes_zoo.config import group_options

    tested = {"vae_binarized_mnist", "glow_mnist", "glow_cifar10", "realnvp_cifar10",
              "simclr_cifar10", "ctc_librispeech", "mask_rcnn_penn_fudan"}
    assert tested <= set(group_options("experiment"))
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("Published protocols (not run here)", 1)[1]
    for name in tested:
        assert f"experiment={name}" in section, name

