"""HuBERT's parts against torchaudio's (independent) and direct computations; the targets'
alignment with the encoder's frames; a tiny pretraining run through train.py."""

from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import entropy
from sklearn.metrics import mutual_info_score
from sklearn.metrics.cluster import contingency_matrix
from torchaudio.models.wav2vec2.components import LogitGenerator

from mlnotes_zoo import create_model
from mlnotes_zoo.data.spoken_symbols import SpokenSymbolsDataModule, frame_labels
from mlnotes_zoo.errors import UsageError
from mlnotes_zoo.evaluate import load_module
from mlnotes_zoo.lit.ctc import LitCTC
from mlnotes_zoo.lit.hubert import LitHuBERT
from mlnotes_zoo.models.hubert import (
    cosine_logits,
    masked_prediction_loss,
    mfcc_features,
    span_mask,
    target_quality,
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


def test_target_quality_equals_scikit_learns_mutual_information_and_purities():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 9, (5000,), generator=g)
    # clusters that partly follow the labels: a noisy many-to-one map plus random ones
    clusters = torch.where(torch.rand(5000, generator=g) < 0.6, (labels * 3) % 13,
                           torch.randint(0, 13, (5000,), generator=g))
    ours = target_quality(labels, clusters)
    y, z = labels.numpy(), clusters.numpy()
    pnmi = mutual_info_score(y, z) / entropy(np.bincount(y))  # both in nats
    table = contingency_matrix(y, z)  # (labels, clusters) counts
    assert abs(float(ours["pnmi"]) - pnmi) < 1e-10 and 0.1 < pnmi < 0.9
    assert abs(float(ours["phone_purity"]) - table.max(0).sum() / len(y)) < 1e-12
    assert abs(float(ours["cluster_purity"]) - table.max(1).sum() / len(y)) < 1e-12
    # clusters that are the labels renamed say everything; independent ones nothing
    perfect = target_quality(labels, (labels * 5 + 2) % 11)
    assert all(abs(float(v) - 1) < 1e-12 for v in perfect.values())
    noise = target_quality(labels, torch.randint(0, 13, (5000,), generator=g))
    assert float(noise["pnmi"]) < 0.01


def test_frame_labels_take_each_centred_windows_commonest_block_label():
    rng = np.random.default_rng(0)
    alignment = np.repeat(rng.integers(0, 5, 60), rng.integers(1, 30, 60)).astype(np.int8)
    num_samples = 8 * len(alignment) - 3
    for frame_samples in (320, 80, 40):
        labels = frame_labels(alignment, num_samples, frame_samples)
        assert len(labels) == 1 + num_samples // frame_samples
        per = frame_samples // 8
        for t, label in enumerate(labels.tolist()):
            window = alignment[max(t * per - per // 2, 0): t * per - per // 2 + per]
            counts = Counter(window.tolist())
            best = max(counts.values())
            assert label == min(k for k, c in counts.items() if c == best)


def test_symbol_alignment_has_the_encoders_frame_rate_and_says_the_transcript():
    model = create_model("hubert", dim=16, num_layers=1, num_heads=2, ff_dim=16).eval()
    data = SpokenSymbolsDataModule(train_size=4, val_size=4, test_size=40)
    alignments = data.frame_alignments("test", model.frame_samples)
    utterances = data.reference_data("test").utterances
    waves = [audio for audio, _ in utterances]
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    frames = model(batch, lengths).lengths  # the encoder's frames
    _, mfcc_frames = mfcc_features(batch, lengths, sample_rate=8000, hop_ms=10.0)
    assert [len(a) for a in alignments] == frames.tolist() == mfcc_frames.tolist()
    for labels, (_, text) in zip(alignments, utterances, strict=True):
        # the sounding symbols in order (silence dropped, repeats merged) are the transcript
        said = [x for x in labels.tolist() if x]
        said = [x for i, x in enumerate(said) if i == 0 or x != said[i - 1]]
        ids = [data.vocab.index(ch) + 1 for ch in text]
        assert said == [x for i, x in enumerate(ids) if i == 0 or x != ids[i - 1]]
        assert labels[0] == 0  # every utterance starts with silence (50-250 ms)


def test_hubert_ctc_runs_the_pretrained_encoder_it_loads():
    torch.manual_seed(0)
    sizes = dict(dim=16, num_layers=2, num_heads=2, ff_dim=16)
    pretrained = create_model("hubert", **sizes).eval()
    model = create_model("hubert_ctc", **sizes).eval()
    model.load_encoder(pretrained)
    waves, lengths = pretrained.example_input(3)
    # the same frames through the same layers: HuBERT's last hidden state, unmasked
    hidden = pretrained(waves, lengths).hidden[-1]
    feats, frames = model.features(waves, lengths)
    x, out_lengths = model.subsample(feats, frames)
    encoded = model.encode(x[:, : int(out_lengths.max())], out_lengths)
    valid = out_lengths[:, None] > torch.arange(encoded.shape[1])
    torch.testing.assert_close(encoded[valid], hidden[valid])
    log_probs, _ = model(waves, lengths)
    torch.testing.assert_close(log_probs, model.classifier(pretrained.norm(hidden)).log_softmax(-1))
    with pytest.raises(ValueError, match="build hubert_ctc with the hubert checkpoint's sizes"):
        create_model("hubert_ctc", dim=32, num_layers=2, num_heads=2, ff_dim=16
                     ).load_encoder(pretrained)


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


SMALL = ["model=hubert", "data.train_size=48", "data.val_size=8", "data.test_size=8",
         "data.batch_size=16", "model.kmeans_utterances=48", "model.net.dim=32",
         "model.net.num_layers=2", "model.net.num_heads=2", "model.net.ff_dim=32",
         "model.net.num_clusters=8", "model.teacher_layer=2", "test=true"]


@pytest.mark.slow
def test_whole_recipe_switches_to_iteration_two_and_reports_both_targets(make_cfg, tmp_path):
    metrics = main(make_cfg(*SMALL, "model.iteration_epochs=1", "trainer.max_epochs=2"))
    assert {"test/masked_acc", "test/masked_ce"} <= metrics.keys()
    assert metrics["test/iteration"] == 2  # the best checkpoint is iteration 2's
    for it in (1, 2):
        assert 0 < metrics[f"test/pnmi_iteration{it}"] < 1
        assert 0 < metrics[f"test/phone_purity_iteration{it}"] <= 1
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state["kmeans.0.cluster_centers"].shape == (8, 39)  # MFCC + deltas
    assert state["kmeans.1.fitted"] and state["kmeans.1.cluster_centers"].shape == (8, 32)
    # the teacher is the network as iteration 1 left it; the network was trained afresh
    assert not torch.equal(state["teacher.final_proj.weight"], state["net.final_proj.weight"])

    # one step of the recipe: iteration 2 from that run's checkpoint, clustering layer 1
    teacher = tmp_path / "teacher.ckpt"
    (tmp_path / "checkpoints" / "last.ckpt").rename(teacher)
    metrics = main(make_cfg(*SMALL, "model.iteration=2", f"model.teacher={teacher}",
                            "model.teacher_layer=1", "trainer.max_epochs=1"))
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state["kmeans.1.cluster_centers"].shape == (8, 32)  # the teacher's width
    assert metrics["test/masked_ce"] > 0 and metrics["test/iteration"] == 2
    # the teacher's MFCC targets came along: the same iteration-1 figures as its own run
    assert "test/pnmi_iteration1" in metrics

    # fine-tuning starts from the pretrained encoder (lit/ctc.py encoder_init), only when fitting
    sizes = dict(dim=32, num_layers=2, num_heads=2, ff_dim=32)
    lit = LitCTC(net=create_model("hubert_ctc", **sizes), encoder_init=str(teacher))
    lit.setup("fit")
    state = torch.load(teacher, weights_only=True)["state_dict"]
    for key, value in lit.net.layers.state_dict().items():
        torch.testing.assert_close(value, state[f"net.layers.{key}"])
    with pytest.raises(UsageError, match="build hubert_ctc with the hubert checkpoint's sizes"):
        LitCTC(net=create_model("hubert_ctc"), encoder_init=str(teacher)).setup("fit")
    with pytest.raises(UsageError, match="takes no pretrained encoder; use model=hubert_ctc"):
        LitCTC(net=create_model("ctc"), encoder_init=str(teacher))
    with pytest.raises(UsageError, match="model.teacher=nosuch.ckpt: no such checkpoint file"):
        LitHuBERT(net=create_model("hubert"), iteration=2, teacher="nosuch.ckpt")
    with pytest.raises(UsageError, match="set model.teacher="):
        LitHuBERT(net=create_model("hubert"), iteration=2)


@pytest.mark.slow
def test_checkpoints_of_the_previous_layout_load_for_eval_predict_and_resume(make_cfg, tmp_path):
    # A one-iteration run, then its checkpoint as the previous LitHuBERT wrote it (before the
    # whole recipe): its one k-means as target_kmeans.*, no switch_seed, no teacher, and no
    # iterations / iteration_epochs hyper-parameters.
    main(make_cfg(*SMALL, "model.iterations=1", "trainer.max_epochs=1", "test=false"))
    new = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert "kmeans.0.cluster_centers" in new["state_dict"] and "teacher.norm.weight" not in \
        new["state_dict"]
    old = copy.deepcopy(new)
    old["state_dict"] = {key.replace("kmeans.0.", "target_kmeans.", 1): value
                         for key, value in new["state_dict"].items() if key != "switch_seed"}
    for key in ("iterations", "iteration_epochs"):
        del old["hyper_parameters"][key]
    path = tmp_path / "old.ckpt"
    torch.save(old, path)
    centres = new["state_dict"]["kmeans.0.cluster_centers"]

    # eval.py / predict.py's path, the model built from today's config (the whole recipe: a
    # teacher and two k-means), and Lightning's load_from_checkpoint (old hyper-parameters)
    loaded = [load_module(make_cfg(*SMALL, f"ckpt_path={path}"))[0],
              LitHuBERT.load_from_checkpoint(path)]
    for module in loaded:
        assert len(module.kmeans) == 2 and module.iteration == 1
        torch.testing.assert_close(module.kmeans[0].cluster_centers, centres, rtol=0, atol=0)
        assert bool(module.kmeans[0].fitted) and not bool(module.kmeans[1].fitted)
        torch.testing.assert_close(module.net.final_proj.weight,
                                   new["state_dict"]["net.final_proj.weight"], rtol=0, atol=0)

    # a teacher of the previous layout gives iteration 2 its MFCC targets
    sizes = dict(dim=32, num_layers=2, num_heads=2, ff_dim=32, num_clusters=8)
    student = LitHuBERT(net=create_model("hubert", **sizes), iteration=2, teacher=str(path),
                        teacher_layer=1)
    torch.testing.assert_close(student.kmeans[0].cluster_centers, centres, rtol=0, atol=0)

    # resume: the targets are kept (not fitted again) and AdamW continues its moments (the old
    # optimizer state held the network's parameters only; today's also the frozen teacher's)
    main(make_cfg(*SMALL, "trainer.max_epochs=2", "test=false", f"ckpt_path={path}"))
    resumed = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == 1 and resumed["global_step"] == 2 * new["global_step"]
    torch.testing.assert_close(resumed["state_dict"]["kmeans.0.cluster_centers"], centres,
                               rtol=0, atol=0)
    steps = [float(s["step"]) for s in resumed["optimizer_states"][0]["state"].values()]
    assert max(steps) == resumed["global_step"]  # not restarted at the resumed epoch's steps


def test_a_missing_encoder_init_or_teacher_stops_before_the_run_dir(run_cli, tmp_path):
    missing = tmp_path / "pretrained.ckpt"
    for key, args in (("encoder_init", ["model=hubert_ctc", f"model.encoder_init={missing}"]),
                      ("teacher", ["model=hubert", "model.iteration=2",
                                   f"model.teacher={missing}"])):
        run_dir = tmp_path / key
        code, err = run_cli(*args, f"hydra.run.dir={run_dir}")
        assert code == 2 and len(err.splitlines()) == 1, err
        assert err.startswith(f"error: model.{key}={missing}: no such checkpoint file "
                              f"(model.{key} takes the .ckpt of a model=hubert run"), err
        assert not run_dir.exists()
