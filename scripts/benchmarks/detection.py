"""Detection training-step time: our FasterRCNN vs torchvision's own ``FasterRCNN`` class
built independently with the same configuration (same backbone, anchors, RoI sizes, head
widths and weights). Ours is torchvision's class assembled from parts passed in, plus input
checks in ``forward``, so the target ratio is <= 1.05.

Timed: forward (train mode, loss dict) + backward + Adam step on a batch of shapes images,
in interleaved rounds (ours, theirs, ours, ...) on the same batch and RNG state; the median
of the per-round ratios is reported, with wall and CPU (process) seconds per step.
"""

from __future__ import annotations

import statistics
import time

import torch
import torchvision


def _torchvision_twin(ours):
    """torchvision.models.detection.FasterRCNN with parts built by torchvision from sizes."""
    from torchvision.models.detection import FasterRCNN as TVFasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    from mlnotes_zoo.models.detection import ResNetFPN

    spec = ours.zoo_spec
    rpn, roi = ours.rpn, ours.roi_heads
    pool = roi.box_roi_pool
    levels = ours.featmap_names
    channels = ours.backbone.out_channels
    rep = roi.box_head.fc7.out_features
    backbone = ResNetFPN(out_channels=channels)  # default sizes, as create_model's defaults
    theirs = TVFasterRCNN(
        backbone,
        num_classes=None,
        min_size=ours.transform.min_size[0], max_size=ours.transform.max_size,
        image_mean=ours.transform.image_mean, image_std=ours.transform.image_std,
        rpn_anchor_generator=AnchorGenerator(rpn.anchor_generator.sizes,
                                             rpn.anchor_generator.aspect_ratios),
        rpn_pre_nms_top_n_train=rpn._pre_nms_top_n["training"],
        rpn_pre_nms_top_n_test=rpn._pre_nms_top_n["testing"],
        rpn_post_nms_top_n_train=rpn._post_nms_top_n["training"],
        rpn_post_nms_top_n_test=rpn._post_nms_top_n["testing"],
        rpn_nms_thresh=rpn.nms_thresh,
        rpn_batch_size_per_image=rpn.fg_bg_sampler.batch_size_per_image,
        box_roi_pool=MultiScaleRoIAlign(levels, pool.output_size, pool.sampling_ratio),
        box_head=TwoMLPHead(channels * pool.output_size[0] * pool.output_size[1], rep),
        box_predictor=FastRCNNPredictor(rep, ours.num_classes),
        box_batch_size_per_image=roi.fg_bg_sampler.batch_size_per_image,
        box_detections_per_img=roi.detections_per_img,
        box_score_thresh=roi.score_thresh, box_nms_thresh=roi.nms_thresh,
    )
    theirs.load_state_dict(ours.state_dict())  # strict: same parameters, same names
    assert not spec or spec["name"] == "faster_rcnn"
    return theirs


def bench_detection_step(batch_size: int = 8, steps: int = 8, rounds: int = 5) -> dict:
    from mlnotes_zoo import create_model
    from mlnotes_zoo.data.shapes import generate_shapes

    torch.manual_seed(0)
    ours = create_model("faster_rcnn").train()
    theirs = _torchvision_twin(ours).train()
    raw, targets = generate_shapes(batch_size, seed=0)
    for t in targets:
        del t["masks"]
    images = [x.float() / 255 for x in raw]
    nets = {"ours": ours, "torchvision": theirs}
    optimizers = {k: torch.optim.Adam(n.parameters(), lr=1e-4) for k, n in nets.items()}

    def run(name: str, n: int) -> tuple[float, float]:
        net, opt = nets[name], optimizers[name]
        torch.manual_seed(1)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            loss = sum(net(images, targets).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n

    for name in nets:
        run(name, 2)  # warm-up
    per_round = []
    for r in range(rounds):
        order = ("ours", "torchvision") if r % 2 == 0 else ("torchvision", "ours")
        per_round.append({name: run(name, steps) for name in order})
    ratios_wall = [t["ours"][0] / t["torchvision"][0] for t in per_round]
    ratios_cpu = [t["ours"][1] / t["torchvision"][1] for t in per_round]
    median = statistics.median
    return {
        "what": "Faster R-CNN train step (forward+backward+Adam), configs/model/faster_rcnn.yaml "
                "defaults, vs torchvision.models.detection.FasterRCNN of the same configuration",
        "batch_size": batch_size,
        "image_size": ours.min_size,
        "parameters": sum(p.numel() for p in ours.parameters()),
        "steps_per_round": steps,
        "rounds": rounds,
        "step_s_ours": round(median(t["ours"][0] for t in per_round), 4),
        "step_s_torchvision": round(median(t["torchvision"][0] for t in per_round), 4),
        "step_cpu_s_ours": round(median(t["ours"][1] for t in per_round), 4),
        "step_cpu_s_torchvision": round(median(t["torchvision"][1] for t in per_round), 4),
        "ratio_wall": round(median(ratios_wall), 3),
        "ratio_cpu": round(median(ratios_cpu), 3),
        "ratios_wall_per_round": [round(x, 3) for x in ratios_wall],
        "target_ratio": 1.05,
        "torchvision": torchvision.__version__,
        "threads": torch.get_num_threads(),
    }


BENCHMARKS = {"detection_step": bench_detection_step}
