"""HuBERT's parts against torchaudio's (independent) and direct computations; the targets'
alignment with the encoder's frames; a tiny pretraining run through train.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchaudio.models.wav2vec2.components import LogitGenerator

from mlnotes_zoo import create_model
from mlnotes_zoo.errors import UsageError
from mlnotes_zoo.lit.hubert import LitHuBERT
from mlnotes_zoo.models.hubert import (
    cosine_logits,
    masked_prediction_loss,
    mfcc_features,
    span_mask,
)
from mlnotes_zoo.train import main


def _runs(row: torch.Tensor) -> list[int]:
    """Lengths of the maximal runs of True in a 1-D bool tensor."""
    runs, current = [], 0
    for value in row.tolist() + [False]:
        if value:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    return runs


def test_span_masks_have_the_configured_spans_and_rate_and_spare_padding():
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([400, 250, 3, 100])
    mask = span_mask(lengths, 400, mask_prob=0.4, span=5, generator=g)
    for b, length in enumerate(lengths.tolist()):
        row = mask[b]
        assert not row[length:].any()  # never padding
        if length < 5:
            assert not row.any()  # too short for one span
            continue
        assert min(_runs(row[:length])) >= 5  # unions of whole 5-frame spans
        share = float(row[:length].float().mean())
        # round(0.4·L/5) spans: 0.4 of the frames without overlaps; with uniform starts
        # the expected union is smaller: about 1 − exp(−0.4) ≈ 0.33 (+ edge effects)
        assert 0.2 < share <= 0.4 + 1e-9
    big = span_mask(torch.full((200,), 500), 500, mask_prob=0.4, span=5, generator=g)
    assert abs(float(big.float().mean()) - 0.33) < 0.03


def test_cosine_logits_and_loss_equal_torchaudios_hubert_logit_generator():
    torch.manual_seed(0)
    generator = LogitGenerator(encoder_embed_dim=16, num_classes=7, final_dim=8,
                               skip_masked=False, skip_nomask=False)
    x = torch.randn(2, 9, 16)
    labels = torch.randint(0, 7, (2, 9))
    mask_m = torch.rand(2, 9) < 0.5
    logit_m, logit_u = generator(x, labels, mask_m, ~mask_m)
    ours = cosine_logits(generator.final_proj(x), generator.label_embeddings, 0.1)  # (2, 9, 7)
    # torchaudio's rows: [positive, all classes with the positive's column at −inf]
    expected_m = ours[mask_m]
    torch.testing.assert_close(logit_m[:, 0], expected_m.gather(1, labels[mask_m][:, None])[:, 0])
    torch.testing.assert_close(logit_m[:, 1:].masked_fill(logit_m[:, 1:].isinf(), 0),
                               expected_m.masked_fill(F.one_hot(labels[mask_m], 7).bool(), 0))
    # the paper's loss: CE with the positive at index 0 (torchaudio's hubert recipe)
    valid = torch.ones_like(mask_m)
    out = masked_prediction_loss(ours, labels, mask_m, valid, unmasked_weight=0.3)
    zeros_m = torch.zeros(len(logit_m), dtype=torch.long)
    zeros_u = torch.zeros(len(logit_u), dtype=torch.long)
    torch.testing.assert_close(out["masked_ce"], F.cross_entropy(logit_m, zeros_m))
    torch.testing.assert_close(out["unmasked_ce"], F.cross_entropy(logit_u, zeros_u))
    torch.testing.assert_close(out["loss"], out["masked_ce"] + 0.3 * out["unmasked_ce"])
    accuracy = (ours.argmax(-1) == labels)[mask_m].float().mean()
    torch.testing.assert_close(out["masked_acc"], accuracy)


def test_padding_frames_are_left_out_of_the_loss():
    torch.manual_seed(1)
    logits, targets = torch.randn(2, 6, 4), torch.randint(0, 4, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.bool)
    valid = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    out = masked_prediction_loss(logits, targets, mask, valid)
    ce = torch.cat([F.cross_entropy(logits[0], targets[0], reduction="none"),
                    F.cross_entropy(logits[1, :3], targets[1, :3], reduction="none")])
    torch.testing.assert_close(out["loss"], ce.mean())


# from 129 samples: the log-mel front end (models/ctc) reflect-pads half its 256-point FFT
@pytest.mark.parametrize("num_samples", [129, 319, 320, 321, 999, 1601, 4001, 7999])
def test_mfcc_targets_align_one_to_one_with_encoder_frames_for_any_length(num_samples):
    model = create_model("hubert", dim=16, num_layers=1, num_heads=2, ff_dim=16).eval()
    waves = 0.1 * torch.randn(2, num_samples + 7)
    lengths = torch.tensor([num_samples, num_samples + 7])
    feats, frames = mfcc_features(waves, lengths, sample_rate=8000, hop_ms=10.0)
    out = model(waves, lengths)
    torch.testing.assert_close(frames, out.lengths)
    torch.testing.assert_close(frames, model.output_lengths(lengths))
    assert feats.shape == (2, out.logits.shape[1], 39)


def test_masked_frames_enter_the_encoder_as_the_mask_embedding():
    torch.manual_seed(0)
    model = create_model("hubert", dim=16, num_layers=1, num_heads=2, ff_dim=16).eval()
    waves, lengths = model.example_input(2)
    frames = int(model.output_lengths(lengths).max())
    mask = torch.zeros(2, frames, dtype=torch.bool)
    mask[:, 3:8] = True
    # with the position term removed, masked frames are exactly the mask embedding
    model.pos_conv.weight.data.zero_()
    model.pos_conv.bias.data.fill_(-1e4)  # gelu(−1e4) = 0
    x = model(waves, lengths, mask=mask).hidden[0]
    torch.testing.assert_close(x[:, 3:8], model.mask_embedding.expand(2, 5, 16))
    assert not torch.isclose(x[:, :3], model.mask_embedding).all()  # the others: features


@pytest.mark.slow
def test_pretraining_runs_and_iteration_two_clusters_the_teachers_layer(make_cfg, tmp_path):
    small = ["model=hubert", "data.train_size=48", "data.val_size=8", "data.test_size=8",
             "data.batch_size=16", "model.kmeans_utterances=48", "model.net.dim=32",
             "model.net.num_layers=2", "model.net.num_heads=2", "model.net.ff_dim=32",
             "model.net.num_clusters=8", "trainer.max_epochs=2", "test=true"]
    metrics = main(make_cfg(*small))
    assert {"test/masked_acc", "test/masked_ce"} <= metrics.keys()
    last = tmp_path / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)["state_dict"]
    assert state["target_kmeans.fitted"] and state["target_kmeans.cluster_centers"].shape == (8, 39)

    teacher = tmp_path / "teacher.ckpt"
    last.rename(teacher)
    cfg = make_cfg(*small, "model.iteration=2", f"model.teacher={teacher}",
                   "model.teacher_layer=1")
    metrics = main(cfg)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state["target_kmeans.cluster_centers"].shape == (8, 32)  # the teacher's width
    assert metrics["test/masked_ce"] > 0
    with pytest.raises(UsageError, match="model.teacher=nosuch.ckpt: no such checkpoint file"):
        LitHuBERT(net=create_model("hubert"), iteration=2, teacher="nosuch.ckpt")
    with pytest.raises(UsageError, match="set model.teacher="):
        LitHuBERT(net=create_model("hubert"), iteration=2)
