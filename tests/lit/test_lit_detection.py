"""LitDetection wiring: losses, COCO mAP through torchmetrics, pictures, and train.py end to end."""

from __future__ import annotations

import json

import pytest
import torch

from mlnotes_zoo import create_model, load_checkpoint
from mlnotes_zoo.lit.detection import LitDetection
from mlnotes_zoo.train import main

SMALL = dict(backbone_stage_channels=(8, 16, 32), backbone_stem_channels=8,
             backbone_out_channels=16, box_representation_size=32)


def _lit(name="mask_rcnn"):
    torch.manual_seed(0)
    return LitDetection(net=create_model(name, **SMALL))


def _target():
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 10:30, 10:30] = 1
    masks[1, 40:60, 30:50] = 1
    return {"boxes": torch.tensor([[10.0, 10, 30, 30], [30, 40, 50, 60]]),
            "labels": torch.tensor([1, 3]), "masks": masks}


def _result(lit, detections, targets):
    lit.val_map.update(lit.metric_format(detections), lit.metric_format(targets))
    result = lit.val_map.compute()
    lit.val_map.reset()
    return result


def test_map_of_perfect_shifted_and_mislabelled_detections():
    lit = _lit()
    target = _target()
    perfect = {"boxes": target["boxes"], "labels": target["labels"],
               "scores": torch.tensor([0.9, 0.8]),
               "masks": target["masks"][:, None].float() * 0.9}  # (N, 1, H, W) probabilities
    result = _result(lit, [perfect], [target])
    assert result["bbox_map"] == pytest.approx(1.0) and result["segm_map"] == pytest.approx(1.0)
    # shifting both boxes by 4 px: IoU = 16·20/(2·400 − 320) = 2/3 -> counted at 0.5, not 0.75
    shifted = dict(perfect, boxes=target["boxes"] + torch.tensor([4.0, 0, 4, 0]),
                   masks=torch.roll(perfect["masks"], 4, dims=-1))
    result = _result(lit, [shifted], [target])
    assert result["bbox_map_50"] == pytest.approx(1.0) and result["bbox_map_75"] == 0
    assert result["segm_map_50"] == pytest.approx(1.0) and result["segm_map_75"] == 0
    wrong = dict(perfect, labels=torch.tensor([2, 2]))
    assert _result(lit, [wrong], [target])["bbox_map"] == 0


def test_faster_rcnn_reports_boxes_only():
    lit = _lit("faster_rcnn")
    assert lit.val_map.iou_type == ("bbox",)
    entry = lit.metric_format([_target()])[0]
    assert "masks" not in entry


def test_model_step_and_frozen_statistics_on_held_out_batches():
    lit = _lit()
    images, targets = lit.net.example_input(2)
    out = lit.model_step((images, targets), "train")
    parts = [v for k, v in out.items() if k != "loss"]
    torch.testing.assert_close(out["loss"], sum(parts))
    assert "loss_mask" in out and out["loss"].requires_grad
    lit.eval()
    stats = {k: v.clone() for k, v in lit.net.state_dict().items() if "running" in k}
    out = lit.model_step((images, targets), "val")
    assert not out["loss"].requires_grad and not lit.net.training
    for k, v in stats.items():
        torch.testing.assert_close(lit.net.state_dict()[k], v)  # BatchNorm statistics kept
    assert lit.val_map.detection_box  # the metric received this batch


def test_pictures_are_image_grids():
    lit = _lit()
    images, targets = lit.net.example_input(3)
    grids = lit.pictures((images, targets))
    assert set(grids) == {"detections", "ground_truth"}
    for grid in grids.values():
        assert grid.dim() == 3 and grid.shape[0] == 3 and 0 <= grid.min() and grid.max() <= 1
    assert grids["ground_truth"].std() > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["faster_rcnn", "mask_rcnn"])
def test_train_py_end_to_end(make_cfg, tmp_path, name):
    small = [f"model.net.{k}={list(v) if isinstance(v, tuple) else v}".replace(" ", "")
             for k, v in SMALL.items()]
    cfg = make_cfg(f"model={name}", "data.num_train=8", "data.num_val=4", "data.num_test=4",
                   "data.batch_size=4", *small)
    metrics = main(cfg)
    expected = {"test/loss", "test/loss_classifier", "test/box_map", "test/box_map_50"}
    if name == "mask_rcnn":
        expected |= {"test/loss_mask", "test/mask_map", "test/mask_map_50"}
    assert expected <= set(metrics)
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"] == pytest.approx(metrics)
    for picture in ("detections.png", "ground_truth.png"):
        assert (tmp_path / "pictures" / picture).is_file()
    net = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert type(net).__name__ == {"faster_rcnn": "FasterRCNN", "mask_rcnn": "MaskRCNN"}[name]
