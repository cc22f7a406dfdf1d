"""Faster/Mask R-CNN networks: I/O contract, config sizes, and equality with torchvision's."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import FasterRCNN as TVFasterRCNN
from torchvision.models.detection import MaskRCNN as TVMaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from mlnotes_zoo import create_model
from mlnotes_zoo.models.detection import FasterRCNN, MaskRCNN, ResNetFPN

SMALL = dict(backbone_stage_channels=(8, 16, 32), backbone_stem_channels=8,
             backbone_out_channels=32, box_representation_size=64)


@pytest.mark.parametrize("name", ["faster_rcnn", "mask_rcnn"])
def test_eval_mode_returns_detections_in_input_pixels(name):
    torch.manual_seed(0)
    net = create_model(name, **SMALL).eval()
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 80)]  # sizes may differ
    with torch.no_grad():
        out = net(images)
    assert len(out) == 2
    for det, image in zip(out, images, strict=True):
        n = len(det["boxes"])
        assert det["boxes"].shape == (n, 4) and det["scores"].shape == (n,)
        labels = det["labels"]
        assert labels.dtype == torch.int64 and ((labels >= 1) & (labels < 4)).all()
        h, w = image.shape[-2:]
        assert (det["boxes"][:, 2] <= w + 1e-3).all() and (det["boxes"][:, 3] <= h + 1e-3).all()
        if name == "mask_rcnn":
            assert det["masks"].shape == (n, 1, h, w)
            assert ((det["masks"] >= 0) & (det["masks"] <= 1)).all()
        else:
            assert "masks" not in det


def test_train_mode_returns_the_named_losses():
    net = create_model("mask_rcnn", **SMALL).train()
    losses = net(*net.example_input(2))
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier",
                           "loss_box_reg", "loss_mask"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())


def test_config_sizes_reach_the_torchvision_parts():
    net = create_model("mask_rcnn", num_classes=6, rpn_anchor_sizes=((8, 16), (32, 48), (64, 96)),
                       rpn_aspect_ratios=(1.0,), box_representation_size=32, mask_layers=(16, 8),
                       box_detections_per_img=7, **{k: v for k, v in SMALL.items()
                                                   if k != "box_representation_size"})
    assert net.rpn.anchor_generator.num_anchors_per_location() == [2, 2, 2]
    assert net.rpn.head.cls_logits.out_channels == 2
    assert net.roi_heads.box_predictor.cls_score.out_features == 6
    assert net.roi_heads.box_predictor.bbox_pred.out_features == 24
    assert net.roi_heads.box_head.fc7.out_features == 32
    assert net.roi_heads.detections_per_img == 7
    assert net.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 6
    assert [m.out_channels for m in net.roi_heads.mask_head if hasattr(m, "out_channels")] \
        == [16, 8] or net.roi_heads.mask_head[-1][0].out_channels == 8
    assert net.backbone.out_channels == 32 and net.featmap_names == ["0", "1", "2"]


def test_wrong_number_of_anchor_levels_is_a_clear_error():
    with pytest.raises(ValueError, match="one tuple per pyramid level"):
        create_model("faster_rcnn", rpn_anchor_sizes=((16,), (32,)))
    with pytest.raises(TypeError):
        create_model("mask_rcnn", mask_layer=(8,))  # misspelt keys are errors


def test_ranges_in_the_signature_are_checked_by_create_model():
    with pytest.raises(ValueError, match=r"num_classes=1: .*2 \(object classes \+ background\)"):
        create_model("faster_rcnn", num_classes=1)
    with pytest.raises(ValueError, match="rpn_nms_thresh=2"):
        create_model("faster_rcnn", rpn_nms_thresh=2.0)
    with pytest.raises(ValueError, match="mask_layers=()"):
        create_model("mask_rcnn", mask_layers=())


def test_backbone_levels_and_strides():
    fpn = ResNetFPN(stage_channels=(8, 16, 32), stage_blocks=(1, 2, 1), out_channels=24,
                    extra_pool=True)
    feats = fpn(torch.rand(2, 3, 64, 64))
    assert list(feats) == ["0", "1", "2", "pool"]
    assert [tuple(f.shape) for f in feats.values()] == [
        (2, 24, 16, 16), (2, 24, 8, 8), (2, 24, 4, 4), (2, 24, 2, 2)]


@pytest.mark.parametrize("ours_cls, theirs_cls", [(FasterRCNN, TVFasterRCNN),
                                                  (MaskRCNN, TVMaskRCNN)])
def test_same_losses_and_detections_as_torchvision_with_the_same_parts(ours_cls, theirs_cls):
    """The wrapper adds nothing: torchvision's own class built from our backbone, anchors and
    sizes, with our weights, gives identical losses (same RNG) and detections."""
    torch.manual_seed(0)
    ours = ours_cls(**SMALL)
    # torchvision builds its own parts; only sizes its defaults do not cover are passed
    kwargs = dict(
        min_size=64, max_size=64, image_mean=[0.5] * 3, image_std=[0.25] * 3,
        rpn_anchor_generator=AnchorGenerator(((12,), (24,), (48,)), ((0.5, 1.0, 2.0),) * 3),
        rpn_pre_nms_top_n_train=400, rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_train=200,
        rpn_post_nms_top_n_test=100, rpn_batch_size_per_image=128,
        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2"], 7, 2),
        box_head=TwoMLPHead(32 * 7 * 7, 64), box_predictor=FastRCNNPredictor(64, 4),
        box_batch_size_per_image=64, box_detections_per_img=20)
    if ours.has_mask:
        kwargs.update(mask_roi_pool=MultiScaleRoIAlign(["0", "1", "2"], 14, 2),
                      mask_head=MaskRCNNHeads(32, [32, 32], 1),
                      mask_predictor=MaskRCNNPredictor(32, 32, 4))
    theirs = theirs_cls(ResNetFPN(stem_channels=8, stage_channels=(8, 16, 32), out_channels=32),
                        num_classes=None, **kwargs)
    assert isinstance(ours, theirs_cls)  # torchvision's class, assembled from passed-in parts
    theirs.load_state_dict(ours.state_dict())  # strict: same parameter names and shapes
    assert sum(p.numel() for p in theirs.parameters()) == sum(p.numel() for p in ours.parameters())
    images, targets = ours.example_input(2)
    for net in (ours, theirs):
        net.train()
    torch.manual_seed(1)
    loss_ours = ours(images, targets)
    torch.manual_seed(1)
    loss_theirs = theirs(images, targets)
    assert loss_ours.keys() == loss_theirs.keys()
    for key in loss_ours:
        torch.testing.assert_close(loss_ours[key], loss_theirs[key])
    ours.eval(), theirs.eval()
    with torch.no_grad():
        for a, b in zip(ours(images), theirs(images), strict=True):
            for key in a:
                torch.testing.assert_close(a[key], b[key])


def test_a_few_steps_fit_two_images():
    torch.manual_seed(0)
    net = create_model("mask_rcnn", **SMALL).train()
    images, targets = net.example_input(2)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = None
    for _ in range(15):
        loss = sum(net(images, targets).values())
        first = float(loss) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss) < 0.5 * first
