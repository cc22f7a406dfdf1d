"""Bad data on disk: a missing or empty root, a damaged image/idx/pickle/audio file, a COCO
JSON with a box outside its image, a transcript with unknown characters. Each is a clear
error naming the file (``FileNotFoundError`` for missing things, ``BadDataError`` for the
rest), or a logged skip with a count where ``on_bad=skip`` asks for it. Every test writes the
bad files itself, in the real on-disk format."""

from __future__ import annotations

import json
import logging
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from mlnotes_zoo.data import (
    AudioFolderDataModule,
    BadDataError,
    CIFAR10DataModule,
    CocoDataModule,
    FashionMNISTDataModule,
    LibriSpeechDataModule,
    MNISTDataModule,
    PennFudanDataModule,
    SpeechCommandsDataModule,
    TextDataModule,
)
from mlnotes_zoo.data.speech import BadAudioError, read_audio

# -- MNIST / Fashion-MNIST idx files ---------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_mnist(root: Path, folder: str = "MNIST", n: int = 12) -> Path:
    raw = root / folder / "raw"
    for split in ("train", "t10k"):
        _write_idx(raw / f"{split}-images-idx3-ubyte", np.zeros((n, 28, 28)))
        _write_idx(raw / f"{split}-labels-idx1-ubyte", np.zeros((n,)))
    return raw


MNISTS = [(MNISTDataModule, "MNIST"), (FashionMNISTDataModule, "FashionMNIST")]


@pytest.mark.parametrize("cls, folder", MNISTS)
@pytest.mark.parametrize("root", ["missing", "empty"])
def test_mnist_missing_or_empty_root_says_where_the_files_go(tmp_path, cls, folder, root):
    if root == "empty":
        (tmp_path / root).mkdir()
    with pytest.raises(FileNotFoundError, match=f"{folder}/raw.*data.root"):
        cls(root=str(tmp_path / root), val_size=2).setup()


@pytest.mark.parametrize("cls, folder", MNISTS)
def test_truncated_idx_file_is_named(tmp_path, cls, folder):
    raw = _write_mnist(tmp_path, folder)
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:1000])
    with pytest.raises(BadDataError, match=f"{images}.*truncated"):
        cls(root=str(tmp_path), val_size=2).setup()


def test_garbage_idx_file_is_named(tmp_path):
    raw = _write_mnist(tmp_path)
    labels = raw / "t10k-labels-idx1-ubyte"
    labels.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(BadDataError, match=f"{labels}: not a 1-d uint8 idx file"):
        MNISTDataModule(root=str(tmp_path), val_size=2).setup()


def test_image_and_label_counts_must_agree(tmp_path):
    raw = _write_mnist(tmp_path)
    _write_idx(raw / "train-labels-idx1-ubyte", np.zeros((7,)))
    with pytest.raises(BadDataError, match="12 images but .*train-labels-idx1-ubyte has 7"):
        MNISTDataModule(root=str(tmp_path), val_size=2).setup()


# -- CIFAR-10 pickled batches ----------------------------------------------------------------


def _write_cifar(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": np.zeros((4, 3072), np.uint8), "labels": [1] * 4}, f)
    return folder


def test_cifar_missing_or_empty_root(tmp_path):
    for root in (tmp_path / "missing", tmp_path):
        with pytest.raises(FileNotFoundError, match="cifar-10-batches-py.*data.root"):
            CIFAR10DataModule(root=str(root), val_size=2).setup()


def test_cifar_truncated_batch_is_named(tmp_path):
    folder = _write_cifar(tmp_path)
    bad = folder / "data_batch_3"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(BadDataError, match=f"{bad}: not a CIFAR-10 python batch"):
        CIFAR10DataModule(root=str(tmp_path), val_size=2).setup()


def test_cifar_batch_of_the_wrong_shape_is_named(tmp_path):
    folder = _write_cifar(tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((4, 1024), np.uint8), "labels": [1] * 3}, f)
    with pytest.raises(BadDataError, match=r"test_batch: expected 'data' \(N, 3072\)"):
        CIFAR10DataModule(root=str(tmp_path), val_size=2).setup()


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_cifar_batch_that_would_run_code_is_refused(tmp_path):
    folder = _write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({"data": _RunsCode(marker), "labels": [1] * 4}, f)
    with pytest.raises(BadDataError, match="data_batch_1.*refusing to load pathlib"):
        CIFAR10DataModule(root=str(tmp_path), val_size=2).setup()
    assert not marker.exists()


# -- text --------------------------------------------------------------------------------------


@pytest.mark.parametrize("content, error, match", [
    (None, FileNotFoundError, "text file not found"),
    (b"", BadDataError, "the text file is empty"),
    (b"  \n\n", BadDataError, "the text file is empty"),
    ("caf\xe9 au lait\n".encode("latin-1") * 50, BadDataError, r"not UTF-8 .*0xe9.*line 1"),
    (b"short text", BadDataError, "fewer than block_size"),
])
def test_bad_text_file_is_named(tmp_path, content, error, match):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(error, match=match) as err:
        TextDataModule(path=str(path), block_size=32).setup()
    assert str(path) in str(err.value)


# -- COCO --------------------------------------------------------------------------------------


def _write_coco(root: Path, split: str = "train", *, box=(5, 4, 10, 10), size=(40, 30),
                category: int = 1, images: int = 2) -> Path:
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    w, h = size
    infos, anns = [], []
    for i in range(1, images + 1):
        Image.fromarray(np.full((h, w, 3), 30 * i, np.uint8)).save(root / split / f"{i}.png")
        infos.append({"id": i, "file_name": f"{i}.png", "width": w, "height": h})
        anns.append({"id": 100 + i, "image_id": i, "category_id": 1, "iscrowd": 0,
                     "bbox": [5, 4, 10, 10], "area": 100,
                     "segmentation": [[5, 4, 15, 4, 15, 14, 5, 14]]})
    x, y, bw, bh = box
    anns.append({"id": 7, "image_id": 1, "category_id": category, "iscrowd": 0,
                 "bbox": list(box), "area": bw * bh,
                 "segmentation": [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]})
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps({"images": infos, "annotations": anns,
                                "categories": [{"id": 1, "name": "thing"}]}))
    return path


def _coco(root: Path, **kwargs) -> CocoDataModule:
    dm = CocoDataModule(root=str(root), train_split="train", val_split="train", num_classes=2,
                        batch_size=2, **kwargs)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("root", ["missing", "empty"])
def test_coco_missing_or_empty_root(tmp_path, root):
    if root == "empty":
        (tmp_path / root).mkdir()
    with pytest.raises(FileNotFoundError, match=f"COCO folder .*{root}.* is missing or empty"):
        _coco(tmp_path / root)


def test_coco_missing_annotation_file_or_images_folder(tmp_path):
    _write_coco(tmp_path)
    with pytest.raises(FileNotFoundError, match="instances_val.json"):
        CocoDataModule(root=str(tmp_path), train_split="train", val_split="val",
                       num_classes=2).setup("fit")
    (tmp_path / "annotations" / "instances_val.json").write_text(
        (tmp_path / "annotations" / "instances_train.json").read_text())
    with pytest.raises(FileNotFoundError, match=f"images folder not found: {tmp_path / 'val'}"):
        CocoDataModule(root=str(tmp_path), train_split="train", val_split="val",
                       num_classes=2).setup("fit")


@pytest.mark.parametrize("text, match", [
    ("{not json", "not a COCO JSON file"),
    ('{"images": []}', "a COCO file needs 'images', 'annotations' and 'categories'"),
    ('{"images": [], "annotations": [], "categories": []}', "no images listed"),
])
def test_coco_bad_annotation_file_is_named(tmp_path, text, match):
    path = _write_coco(tmp_path)
    path.write_text(text)
    with pytest.raises(BadDataError, match=f"{path}: {match}"):
        _coco(tmp_path)


@pytest.mark.parametrize("box, what", [
    ((35, 4, 10, 10), "w=10"),     # right edge at 45 > 40
    ((5, -8, 10, 10), "y=-8"),     # above the top
    ((5, 25, 10, 10), "h=10"),     # bottom edge at 35 > 30
])
def test_coco_box_outside_the_image_is_an_error_naming_file_annotation_and_image(
        tmp_path, box, what):
    path = _write_coco(tmp_path, box=box)
    with pytest.raises(BadDataError) as err:
        _coco(tmp_path)
    message = str(err.value)
    for text in (str(path), "annotation 7", what, "outside the 40x30 image 1.png",
                 "data.on_bad=skip"):
        assert text in message, message


def test_coco_on_bad_skip_drops_the_box_and_logs_a_count(tmp_path, caplog):
    _write_coco(tmp_path, box=(35, 4, 10, 10))
    with caplog.at_level(logging.WARNING):
        dm = _coco(tmp_path, on_bad="skip")
    assert "skipped 1 of 3 annotations" in caplog.text and "annotation 7" in caplog.text
    _, target = dm.splits["train"][0]
    assert target["boxes"].tolist() == [[5, 4, 15, 14]]  # the good box only


def test_coco_box_within_a_pixel_of_the_edge_is_clipped(tmp_path):
    _write_coco(tmp_path, box=(30.5, 20.0, 10.25, 10.5))  # 0.75 px right, 0.5 px below
    _, target = _coco(tmp_path).splits["train"][0]
    assert target["boxes"][-1].tolist() == [30.5, 20.0, 40.0, 30.0]


def test_coco_unknown_category_is_named(tmp_path):
    _write_coco(tmp_path, category=9)
    with pytest.raises(BadDataError, match="annotation 7: category_id 9 is not in 'categories'"):
        _coco(tmp_path)


@pytest.mark.parametrize("damage, error, match", [
    ("garbage", BadDataError, "cannot read image"),
    ("truncated", BadDataError, "cannot read image"),
    ("missing", FileNotFoundError, "image not found"),
    ("resized", BadDataError, "is 20x30 pixels but .*instances_train.json says 40x30"),
])
def test_coco_damaged_image_is_named_when_the_loader_reaches_it(tmp_path, damage, error, match):
    _write_coco(tmp_path)
    image = tmp_path / "train" / "2.png"
    if damage == "garbage":
        image.write_bytes(b"\x89PNG not really")
    elif damage == "truncated":
        image.write_bytes(image.read_bytes()[:60])
    elif damage == "missing":
        image.unlink()
    else:
        Image.fromarray(np.zeros((30, 20, 3), np.uint8)).save(image)
    dm = _coco(tmp_path)
    with pytest.raises(error, match=match) as err:
        list(dm.train_dataloader())
    assert str(image) in str(err.value)


# -- Penn-Fudan-style mask folders -------------------------------------------------------------


def _write_penn_fudan(root: Path, n: int = 4) -> None:
    (root / "PNGImages").mkdir(parents=True)
    (root / "PedMasks").mkdir()
    for i in range(n):
        Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(root / "PNGImages" / f"P{i}.png")
        ids = np.zeros((20, 24), np.uint8)
        ids[2:8, 3:9] = 1
        Image.fromarray(ids).save(root / "PedMasks" / f"P{i}_mask.png")


def test_penn_fudan_empty_root_and_missing_mask(tmp_path):
    with pytest.raises(FileNotFoundError, match="no images under"):
        PennFudanDataModule(root=str(tmp_path)).setup()
    _write_penn_fudan(tmp_path / "pf")
    (tmp_path / "pf" / "PedMasks" / "P2_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match="P2_mask.png"):
        PennFudanDataModule(root=str(tmp_path / "pf"), val_size=1, test_size=1).setup()


@pytest.mark.parametrize("which, match", [
    ("PNGImages/P0.png", "cannot read image"),
    ("PedMasks/P0_mask.png", "cannot read image"),
    ("PedMasks/P0_mask.png:resized", "must be one channel of the image's size"),
])
def test_penn_fudan_damaged_image_or_mask_is_named(tmp_path, which, match):
    _write_penn_fudan(tmp_path)
    name, _, how = which.partition(":")
    path = tmp_path / name
    if how == "resized":
        Image.fromarray(np.zeros((10, 10), np.uint8)).save(path)
    else:
        path.write_bytes(b"damaged")
    dm = PennFudanDataModule(root=str(tmp_path), val_size=1, test_size=1)
    dm.setup()
    full = dm.splits["train"].dataset
    with pytest.raises(BadDataError, match=match) as err:
        full[0]
    assert str(path) in str(err.value)


# -- speech ------------------------------------------------------------------------------------


def _tone(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def _write_audio_folder(root: Path, rows: list[tuple[str, str]]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, _ in rows:
        if not (root / name).exists():
            soundfile.write(root / name, _tone(0.2, 16000), 16000)
    (root / "transcripts.tsv").write_text("".join(f"{n}\t{t}\n" for n, t in rows))


@pytest.mark.parametrize("root", ["missing", "empty"])
def test_audio_folder_missing_or_empty_root(tmp_path, root):
    if root == "empty":
        (tmp_path / root).mkdir()
    with pytest.raises(FileNotFoundError, match=f"{root}"):
        AudioFolderDataModule(root=str(tmp_path / root)).setup()


@pytest.mark.parametrize("cls, name", [(LibriSpeechDataModule, "LibriSpeech"),
                                       (SpeechCommandsDataModule, "Speech Commands")])
def test_speech_corpora_missing_root(tmp_path, cls, name):
    with pytest.raises(FileNotFoundError, match=f"{name} not found under .*data.root"):
        cls(root=str(tmp_path)).setup()


@pytest.mark.parametrize("bad_name, bad_text, match", [
    ("noise.wav", "hello", "cannot read audio"),
    ("ok.wav", "héllo wörld", r"characters \['é', 'ö'\] outside the vocabulary"),
    ("ok.wav", "100 percent", r"characters \['0', '1'\] outside the vocabulary"),
])
def test_corrupt_audio_or_unknown_characters_error_or_skip(tmp_path, caplog, bad_name,
                                                           bad_text, match):
    root = tmp_path / "audio"
    root.mkdir()
    (root / "noise.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    rows = [("a.wav", "good one"), ("b.wav", "good two"), (bad_name, bad_text)]
    _write_audio_folder(root, rows)
    strict = AudioFolderDataModule(root=str(root), on_bad="error", val_fraction=0.0,
                                   test_fraction=0.0)
    with pytest.raises(BadAudioError, match=f"{root / bad_name}: .*{match}"):
        strict.screen(strict.load_split("train"), "train")
    lenient = AudioFolderDataModule(root=str(root), on_bad="skip", val_fraction=0.0,
                                    test_fraction=0.0)
    with caplog.at_level(logging.WARNING):
        kept = lenient.screen(lenient.load_split("train"), "train")
    assert [u.text for u in kept] == ["good one", "good two"]
    assert "skipped 1 of 3 train utterances" in caplog.text and bad_name in caplog.text


def test_transcript_file_that_is_not_utf8_is_named(tmp_path):
    root = tmp_path / "audio"
    _write_audio_folder(root, [("a.wav", "good")])
    (root / "transcripts.tsv").write_bytes("a.wav\tcaf\xe9\n".encode("latin-1"))
    with pytest.raises(BadAudioError, match="transcripts.tsv: transcripts must be UTF-8"):
        AudioFolderDataModule(root=str(root)).setup()


def test_audio_damaged_after_screening_is_named_when_read(tmp_path):
    path = tmp_path / "late.wav"
    path.write_bytes(b"not audio")
    with pytest.raises(BadAudioError, match=f"{path}: cannot read audio"):
        read_audio(path, 16000)


# -- through the command line ------------------------------------------------------------------


def test_cli_reports_a_missing_data_root_in_one_line_with_exit_code_2(run_train, tmp_path):
    out = run_train("model=vae", "data=mnist", f"data.root={tmp_path / 'nothing'}",
                    "trainer.accelerator=cpu", "logger=none", "callbacks=none",
                    cwd=tmp_path, timeout=240)
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: MNIST not found under") and "nothing" in last
    assert "Traceback" not in out.stderr
