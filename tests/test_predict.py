"""predict.py for every registered model: one handler per family, on the user's own input.

Each model's checkpoint is written once for the module (``checkpoints``): its LightningModule
built from its (shrunk) config and saved as Lightning saves one (``on_save_checkpoint``
included), in a run dir with the ``.hydra`` files train.py writes, so that predict composes
the model and data from them. The weights are untrained: the checks are on what each
family's answer must satisfy whatever the weights (a log-likelihood of binary pixels is
<= 0, a training image's nearest training image is itself, a cluster is the nearest centre,
a distribution sums to 1, a picture decodes at the expected size ...). predict runs
in-process; one test runs the command line.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from PIL import Image

from mlnotes_zoo import list_models
from mlnotes_zoo.config import compose
from mlnotes_zoo.data.seq2seq_numbers import VOCAB
from mlnotes_zoo.evaluate import compose_for_checkpoint
from mlnotes_zoo.predict import PREDICTORS, InputError, predict

REPO = Path(__file__).resolve().parents[1]

# Small networks and cheap settings; the rest is each model's default config.
TINY = {
    "vae": ["model.net.hidden=32", "model.net.latent_dim=4", "model.iwae_samples=16"],
    "dcgan": ["model.net.gen_width=8", "model.net.disc_width=8", "model.net.latent_dim=8"],
    "wgan_gp": ["model.net.gen_width=8", "model.net.disc_width=8", "model.net.latent_dim=8"],
    "realnvp": ["model.net.hidden=8", "model.net.num_couplings=1"],
    "glow": ["model.net.hidden=8", "model.net.depth=1"],
    "vqvae": ["model.net.hidden=8", "model.net.residual_hidden=4", "model.net.num_codes=8"],
    "ddpm": ["model.net.timesteps=20", "model.net.schedule=cosine", "model.net.widths=[8,8]",
             "model.sample_steps=5", "model.net.num_classes=10"],  # a row per class
    "ddpm_inpaint": ["model.net.timesteps=20", "model.net.schedule=cosine",
                     "model.net.widths=[8,8]", "model.sample_steps=5"],
    "gpt": ["model.net.dim=32", "model.net.num_layers=1", "model.sample_length=20"],
    "transformer": ["model.net.dim=32", "model.net.encoder_layers=1",
                    "model.net.decoder_layers=1"],
    "rnn_seq2seq": ["model.net.hidden=16", "model.net.embed_dim=8",
                    "model.net.attention_dim=16"],
    "hubert": ["model.net.dim=32", "model.net.num_heads=2",  # its layers: teacher_layer's
               "model.net.ff_dim=32"],
    "ctc": ["model.net.dim=32", "model.net.hidden=32", "model.net.num_layers=1"],
    "conformer_ctc": ["model.net.dim=32", "model.net.num_layers=1", "model.net.ffn_dim=32"],
    "simclr": ["model.net.widths=[8,16]"],
    "supcon": ["model.net.widths=[8,16]"],
    "cnf": ["model.net.hidden=16", "model.net.num_layers=2"],
    "latent_ode": ["model.net.hidden=8", "model.net.dynamics_hidden=8",
                   "model.net.decoder_hidden=8"],
    "act": ["model.net.hidden=16", "model.net.embed_dim=16"],
    "pondernet": ["model.net.hidden=16", "model.net.embed_dim=16"],
}


def _save_run(run_dir: Path, overrides: list[str]) -> Path:
    """A run dir as train.py leaves it (``.hydra/*.yaml``, ``checkpoints/last.ckpt``) with
    the untrained LightningModule of ``overrides``."""
    cfg = compose(overrides)
    module = instantiate(cfg.model, _convert_="all")
    if type(module).__name__ == "LitMixture":  # fitted by EM in a moment: a real model
        module.net.fit(instantiate(cfg.data).reference_data("train").tensors[0], max_iter=10)
    checkpoint = {"epoch": 0, "global_step": 0, "pytorch-lightning_version": pl.__version__,
                  "state_dict": module.state_dict(),
                  "hyper_parameters": OmegaConf.to_container(OmegaConf.create(
                      dict(module.hparams)))}
    module.on_save_checkpoint(checkpoint)
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    torch.save(checkpoint, run_dir / "checkpoints" / "last.ckpt")
    return run_dir / "checkpoints" / "last.ckpt"


class _Runs(dict):
    """Each model's run dir, written on first use (shared by the module's tests)."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def __missing__(self, name: str) -> Path:
        torch.manual_seed(0)
        self[name] = _save_run(self.root / name, [f"model={name}", *TINY.get(name, [])])
        return self[name]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    return _Runs(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Inputs as a user has them: a digit image (a training image, PNG), an RGB picture of
    shapes, a WAV file, a CSV of observations."""
    import soundfile

    from mlnotes_zoo.data.digits import DigitsDataModule
    from mlnotes_zoo.data.shapes import generate_shapes

    root = tmp_path_factory.mktemp("inputs")
    digits = DigitsDataModule()
    train = digits.reference_data("train").tensors[0]
    pixels = (train[5, 0].numpy() * 255).round().astype(np.uint8)
    Image.fromarray(pixels, mode="L").save(root / "digit.png")
    image = generate_shapes(1, image_size=64, seed=3)[0][0]  # uint8 (3, 64, 64)
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / "shapes.png")
    t = np.arange(8000) / 8000
    soundfile.write(root / "clip.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32),
                    8000)
    (root / "series.csv").write_text("t,x1,x2\n0.0,1.0,0.0\n1.0,0.5,0.8\n2.5,-0.6,0.7\n")
    (root / "not_an_image.png").write_text("hello")
    (root / "short_rows.csv").write_text("0.5,1.0\n")
    return {"digit": root / "digit.png", "shapes": root / "shapes.png",
            "wav": root / "clip.wav", "csv": root / "series.csv",
            "junk": root / "not_an_image.png", "short_rows": root / "short_rows.csv",
            "train_index": 5}


def _predict(ckpt: Path, out: Path, *overrides: str) -> dict:
    cfg = compose_for_checkpoint("predict", [f"ckpt_path={ckpt}", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return predict(cfg)


def _image(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.load()
        return image.size


@functools.cache
def family(name: str) -> str:
    """The LightningModule family of model=<name>, or the family it derives from that has
    a handler (ddpm_inpaint's LitDiffusionInpaint -> LitDiffusion)."""
    from hydra.utils import get_class

    module = get_class(compose([f"model={name}"]).model._target_)
    return next(k.__name__ for k in module.__mro__ if k.__name__ in PREDICTORS)


# What each family is given (a digit image, a number, a WAV ...)
def _inputs(family: str, files: dict) -> list[str]:
    parity = "input=1,0,-1,0,0,0,1,0,0,0,0,0,1,0,0,0"
    return {"LitVAE": [f"input={files['digit']}", "n=4"],
            "LitFlow": [f"input={files['digit']}", "n=4"],
            "LitVQVAE": [f"input={files['digit']}"],
            "LitDiffusion": [f"input={files['digit']}", "n=4"],
            "LitGAN": ["n=4"],
            "LitDiffusionInpaint": [f"input={files['digit']}"],
            "LitDAE": [f"input={files['digit']}"],
            "LitSeq2Seq": ["input=4071"], "LitRNNSeq2Seq": ["input=4071"],
            "LitGPT": ["input=To be, or not", "n=2"],
            "LitPonderNet": [parity], "LitACT": [parity],
            "LitCTC": [f"input={files['wav']}"], "LitHuBERT": [f"input={files['wav']}"],
            "LitDetection": [f"input={files['shapes']}"],
            "LitSimCLR": [f"input={files['digit']}"],
            "LitMixture": [f"input={files['digit']}"],
            "LitODENet": [f"input={files['digit']}"],
            "LitCNF": ["input=0.5,-1.0", "n=300"],
            "LitLatentODE": [f"input={files['csv']}"]}[family]


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_predicts_on_its_input(checkpoints, files, tmp_path, name):
    kind = family(name)
    report = _predict(checkpoints[name], tmp_path, *_inputs(kind, files))
    saved = json.loads((tmp_path / "prediction.json").read_text())
    assert saved["model"] == name and saved["checkpoint"] == str(checkpoints[name])
    for file in report["files"]:
        assert (tmp_path / file).is_file(), file
        if file.endswith(".png"):
            assert min(_image(tmp_path / file)) > 0
    CHECKS[kind](report, tmp_path, {**files, "ckpt": checkpoints[name]})


def _vae(report, out, files):
    # Bernoulli pixels: P(x) <= 1, so the bound log p(x) >= IWAE is <= 0 and finite
    assert -1e4 < report["log_likelihood_nats"] <= 0
    assert _image(out / "samples.png") == (4 * 9 + 1, 10)  # 4 samples of 8x8 + padding
    assert _image(out / "reconstruction.png") == (10, 19)  # the input above its reconstruction


def _gan(report, out, files):
    assert report["samples"] == 4 and _image(out / "samples.png") == (4 * 9 + 1, 10)


def _flow(report, out, files):
    assert np.isfinite(report["bits_per_dim"]) and report["samples"] == 4


def _vqvae(report, out, files):
    codes = np.array(report["codes"])
    assert codes.shape == (4, 4) and codes.min() >= 0 and codes.max() < 8


def _ddpm(report, out, files):
    if "classes" in report:  # class-conditional: a row of 4 samples per class
        rows = report["classes"]
        assert report["samples_per_class"] == 4
    else:
        rows = 1
    assert _image(out / "samples.png") == (4 * 9 + 1, rows * 9 + 1)
    assert report["bits_per_dim"] > 0


def _translate(report, out, files):
    assert report["number"] == 4071
    assert all(token in VOCAB[3:] for token in report["tokens"])  # no specials
    assert "".join(report["words"].split()) == "".join(report["tokens"])


def _gpt(report, out, files):
    assert len(report["continuations"]) == 2
    text = (out / "continuations.txt").read_text(encoding="utf-8")
    assert text.startswith("To be, or not") and text.count("To be, or not") == 2


def _parity(report, out, files):
    assert report["true_parity"] == 0  # four non-zero entries
    assert report["parity"] in (0, 1)
    assert sum(report["halting_distribution"]) == pytest.approx(1, abs=1e-4)
    steps = np.arange(1, len(report["halting_distribution"]) + 1)
    assert report["expected_steps"] == pytest.approx(
        float((steps * report["halting_distribution"]).sum()), rel=1e-4)


def _speech(report, out, files):
    vocab = torch.load(files["ckpt"], weights_only=True)["hyper_parameters"]["net"]["vocab"]
    assert set(report["text"]) <= set(vocab) | {" "}
    assert report["seconds"] == pytest.approx(1.0)


def _hubert(report, out, files):
    assert report["frames"] == 26  # 1 s at 40 ms a frame: 1 + 8000 // 320
    assert all(0 <= u < 50 for u in report["units"])


def _detect(report, out, files):
    assert _image(out / "detections.png") == _image(files["shapes"])
    for found in report["detections"]:
        assert found["label"] in ("circle", "square", "triangle") and 0 <= found["score"] <= 1


def _embed(report, out, files):
    # the input is training image 5, saved as a PNG: its nearest training image is itself
    assert report["neighbours"][0]["index"] == files["train_index"]
    assert report["neighbours"][0]["cosine"] == pytest.approx(1, abs=1e-3)
    assert _image(out / "nearest.png") == (9 * 9 + 1, 10)  # the query and 8 neighbours


def _cluster(report, out, files):
    # the fitted mixture's answer for the PNG's pixels, computed here from the checkpoint's
    # parameters: distances to the centres (k-means), torch's multivariate normal (mixture)
    from torch.distributions import MultivariateNormal

    with Image.open(files["digit"]) as image:
        x = torch.tensor(np.asarray(image), dtype=torch.float64).flatten() / 255
    state = torch.load(files["ckpt"], weights_only=True)["state_dict"]
    if "responsibilities" in report:
        chol = state["net.precisions_cholesky"]  # precision = P Pᵀ
        mvn = MultivariateNormal(state["net.means"], precision_matrix=chol @ chol.transpose(1, 2))
        joint = state["net.weights"].log() + mvn.log_prob(x)
        expected = joint.softmax(0)
        assert report["responsibilities"] == pytest.approx(expected.tolist(), abs=1e-5)
        assert report["log_likelihood_nats"] == pytest.approx(float(joint.logsumexp(0)),
                                                              rel=1e-6)
    else:
        distances = ((state["net.cluster_centers"] - x) ** 2).sum(1)
        assert report["squared_distances"] == pytest.approx(distances.tolist(), rel=1e-6)
    assert report["cluster"] == int(expected.argmax() if "responsibilities" in report
                                    else distances.argmin())


def _classify(report, out, files):
    assert sum(report["probabilities"]) == pytest.approx(1, abs=1e-5)
    assert report["class"] == int(np.argmax(report["probabilities"])) and report["nfe"] > 0


def _cnf(report, out, files):
    points = json.loads((out / "samples.json").read_text())
    assert np.array(points).shape == (300, 2) and np.isfinite(report["log_density_nats"])


def _latent_ode(report, out, files):
    lines = (out / "trajectory.csv").read_text().splitlines()
    assert lines[0] == "t,x1,x2" and len(lines) == 101  # the data's 100 grid times
    assert report["observed_points"] == 3


def _inpaint(report, out, files):
    # the visible pixels are kept; a row of masked inputs and one of fills per mask kind
    assert all(report[f"changed_visible_pixels_{kind}"] == 0 for kind in report["mask_kinds"])
    assert _image(out / "inpainting.png") == (10, 2 * len(report["mask_kinds"]) * 9 + 1)


def _denoise(report, out, files):
    # noisier inputs have a lower PSNR; rows: input, r(input), noisy/denoised per σ(, fill)
    sigmas = sorted(float(k.removeprefix("psnr_noisy_sigma")) for k in report
                    if k.startswith("psnr_noisy_sigma"))
    noisy = [report[f"psnr_noisy_sigma{s:g}"] for s in sigmas]
    assert noisy == sorted(noisy, reverse=True) and len(sigmas) >= 1
    assert _image(out / "denoising.png")[1] in ((2 + 2 * len(sigmas)) * 9 + 1,
                                                (4 + 2 * len(sigmas)) * 9 + 1)


CHECKS = {"LitDiffusionInpaint": _inpaint, "LitDAE": _denoise,
          "LitVAE": _vae, "LitFlow": _flow, "LitVQVAE": _vqvae, "LitDiffusion": _ddpm,
          "LitGAN": _gan, "LitSeq2Seq": _translate, "LitRNNSeq2Seq": _translate,
          "LitGPT": _gpt, "LitPonderNet": _parity, "LitACT": _parity, "LitCTC": _speech,
          "LitHuBERT": _hubert, "LitDetection": _detect, "LitSimCLR": _embed,
          "LitMixture": _cluster, "LitODENet": _classify, "LitCNF": _cnf,
          "LitLatentODE": _latent_ode}


@pytest.mark.parametrize("name", list_models())
def test_every_model_has_a_handler_and_a_check(name):
    assert family(name) in CHECKS


@pytest.mark.parametrize("name, args, words", [
    ("gmm", ["input=no_such.png"], "no such file"),
    ("odenet", ["input={junk}"], "not an image"),
    ("transformer", ["input=forty"], "not a whole number"),
    ("transformer", [], "needs input="),
    ("pondernet", ["input=1,0,2"], "entries in {-1, 0, 1}"),
    ("dcgan", ["input={digit}"], "a GAN has neither a likelihood"),
    ("cnf", ["input=1,2,3"], "3 coordinate(s)"),
    ("latent_ode", ["input={short_rows}"], "line 1 has 2 values"),
    ("vae", ["n=-1"], "n=-1: must be an integer >= 0"),
])
def test_input_that_does_not_fit_is_one_line(checkpoints, files, tmp_path, name, args, words):
    from mlnotes_zoo.errors import ZooError

    args = [a.format(**files) for a in args]
    with pytest.raises(ZooError) as info:
        _predict(checkpoints[name], tmp_path, *args)
    assert words in str(info.value) and len(str(info.value).splitlines()) == 1
    assert info.value.exit_code == 2
    assert isinstance(info.value, InputError) or name == "vae"


def test_a_checkpoint_moved_out_of_its_run_dir_predicts_from_its_hyper_parameters(
        checkpoints, files, tmp_path):
    moved = tmp_path / "vae.ckpt"
    moved.write_bytes(checkpoints["vae"].read_bytes())
    report = _predict(moved, tmp_path / "out", f"input={files['digit']}", "n=0")
    here = _predict(checkpoints["vae"], tmp_path / "here", f"input={files['digit']}", "n=0")
    assert report["log_likelihood_nats"] == pytest.approx(here["log_likelihood_nats"])


def test_the_command_line_translates_and_refuses_bad_input(checkpoints, tmp_path, capfd,
                                                          monkeypatch):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ok = subprocess.run([sys.executable, str(REPO / "predict.py"),
                         f"ckpt_path={checkpoints['transformer']}", "input=4071",
                         f"hydra.run.dir={tmp_path / 'ok'}"],
                        capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr
    report = json.loads((tmp_path / "ok" / "prediction.json").read_text())
    assert f"4071 -> {report['words']}" in ok.stdout
    # in-process: input=1,000 is one string (not a Hydra sweep), and not a number
    from mlnotes_zoo.predict import cli

    monkeypatch.setattr(sys, "argv", ["predict.py"])
    capfd.readouterr()
    with pytest.raises(SystemExit) as info:
        cli([f"ckpt_path={checkpoints['transformer']}", "input=1,000",
             f"hydra.run.dir={tmp_path / 'bad'}"])
    GlobalHydra.instance().clear()
    assert info.value.code == 2
    assert capfd.readouterr().err.strip().splitlines() == [
        "error: input=1,000: not a whole number from 0 to 999,999,999 (digits only)"]


@pytest.mark.slow
def test_a_trained_transformer_translates_numbers_it_never_saw(make_cfg, tmp_path):
    # ~15 epochs of 800 numbers below 1,000 solve the task (validation exact match 1.0); the
    # checkpoint alone (no run dir beside it) translates held-out numbers as number_to_words
    from mlnotes_zoo.data.seq2seq_numbers import SeqNumbersDataModule, number_to_words
    from mlnotes_zoo.train import main

    data = ["data.max_value=999", "data.train_size=800", "data.val_size=100",
            "data.test_size=99", "data.batch_size=32"]
    cfg = make_cfg("model=transformer", *data, "trainer.max_epochs=30",
                   "trainer.limit_train_batches=1.0", "trainer.limit_val_batches=1.0",
                   "trainer.limit_test_batches=1.0", "model.patience=null", "logger=none",
                   "callbacks.pictures=null", "trainer.enable_progress_bar=false")
    metrics = main(cfg)
    assert metrics["test/exact_match"] >= 0.95
    (best,) = (tmp_path / "checkpoints").glob("best-*.ckpt")
    unseen = SeqNumbersDataModule(max_value=999, train_size=800, val_size=100,
                                  test_size=99).draw_numbers()["test"][:10]
    right = 0
    for number in unseen:
        report = _predict(best, tmp_path / "predict" / str(number), f"input={number}")
        right += report["words"] == " ".join(number_to_words(number))
    assert right >= 9, right


def test_a_cnf_of_images_gives_bits_per_dim_and_a_sample_grid(files, tmp_path):
    # experiment=cnf_digits: the CNF on flattened 8x8 digits, modelled as the flows model them
    ckpt = _save_run(tmp_path / "run", ["experiment=cnf_digits", "model.net.hidden=16"])
    report = _predict(ckpt, tmp_path / "out", f"input={files['digit']}", "n=4")
    assert report["bits_per_dim"] > 0 and report["summary"].endswith("on 17 levels")
    assert _image(tmp_path / "out" / "samples.png") == (4 * 9 + 1, 10)
