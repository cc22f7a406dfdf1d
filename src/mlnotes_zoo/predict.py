"""Use a trained model on your own input: ``python predict.py ckpt_path=<ckpt> [input=...]
[n=...]`` (the ``mlnotes-zoo-predict`` entry point).

The checkpoint's model and data are composed as ``eval.py`` composes them
(:func:`mlnotes_zoo.evaluate.checkpoint_overrides`), its LightningModule built from the config
and its weights read with ``weights_only=True`` (:func:`mlnotes_zoo.evaluate.load_module`).
What a family is for is declared here, in one handler per family (``@predicts("LitVAE")``,
keyed by :meth:`~mlnotes_zoo.lit.base.ZooModule.family`), so that the LightningModules stay
as they are:

=====================  ======================================================================
family                 ``input=``                       what comes out
=====================  ======================================================================
vae                    an image (optional)              samples grid; its IWAE log-likelihood
                                                        and reconstruction
dcgan, wgan_gp         (none: a GAN has no likelihood)  samples grid
realnvp, glow          an image (optional)              samples grid; its bits/dim
vqvae                  an image (optional)              its reconstruction and codes (else test
                                                        images'); a VQ-VAE has no prior to sample
ddpm                   an image (optional)              samples grid (a row per class when
                                                        class-conditional); its bound in bits/dim
ddpm_inpaint           an image (optional)              its hidden pixels filled, per mask kind
                                                        (else test images')
dae                    an image (optional)              it denoised as given, and with noise σ
                                                        added (PSNR); a lower-half fill
transformer,           a number 0..999,999,999          the number in words (greedy; beam too
rnn_seq2seq                                             for the RNN)
gpt                    a text prompt                    ``n`` continuations
pondernet, act         a parity vector, e.g. 1,0,-1,1   parity and the halting-step distribution
ctc, conformer_ctc     an audio file                    the transcription (greedy and beam)
hubert                 an audio file                    the predicted unit per frame
faster_rcnn, mask_rcnn an image                         boxes (and masks) drawn; detections
simclr, supcon         an image                         its embedding and ``n`` nearest training
                                                        images
gmm, kmeans            an image (optional)              its cluster (and responsibilities);
                                                        else samples / centres
odenet                 an image                         class probabilities
cnf                    a point x,y or an image          its log-density; samples (optional
                       (optional)                       input)
latent_ode             a CSV t,x1,x2 (optional)         the extrapolated trajectory (else a test
                                                        series'), CSV and picture
=====================  ======================================================================

The model runs on the CPU. Everything goes to a new run dir
(``outputs/<model>/predict/<date>_<time>``): ``prediction.json`` and the pictures; the answer
is also printed. Input that does not fit is one line naming what was expected
(:class:`InputError`, exit code 2).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from mlnotes_zoo.errors import UsageError, ZooError

__all__ = ["main", "cli", "predict", "predicts", "PREDICTORS", "Request", "InputError",
           "read_image"]


class InputError(ZooError, ValueError):
    """``input=`` (or ``n=``) does not fit the model: what was given and what is expected."""


@dataclass
class Request:
    """What a handler gets: the module (eval mode, weights loaded), the DataModule (not set
    up: a handler that needs a split asks ``datamodule.reference_data``), the user's input
    (None when not given) and ``n`` (None: the handler's default), and where files go."""

    module: Any
    datamodule: Any
    input: str | None
    n: int | None
    out_dir: Path
    model: str = ""
    files: list[str] = field(default_factory=list)

    def count(self, default: int, what: str, most: int = 10_000) -> int:
        n = default if self.n is None else self.n
        if n > most:
            raise InputError(f"n={n}: at most {most} {what}")
        return n

    def save_image(self, images: Tensor, name: str, nrow: int = 8) -> Path:
        """A grid of ``images`` (N, C, H, W) in [0, 1] as ``<out_dir>/<name>``."""
        from torchvision.utils import save_image

        path = self.out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(images.detach().float().clamp(0, 1).cpu(), path, nrow=nrow, padding=1,
                   pad_value=0.5)
        self.files.append(name)
        return path

    def needs_input(self, what: str) -> str:
        if self.input is None:
            raise InputError(f"model={self.model} needs input=<{what}>")
        return self.input


Handler = Callable[[Request], dict[str, Any]]
PREDICTORS: dict[str, Handler] = {}


def predicts(*families: str) -> Callable[[Handler], Handler]:
    """Register a handler for the LightningModule families ``families`` (class names as
    :meth:`~mlnotes_zoo.lit.base.ZooModule.family` gives them); a duplicate raises."""

    def register(handler: Handler) -> Handler:
        for family in families:
            if family in PREDICTORS:
                raise ValueError(f"a predict handler for {family} is already registered")
            PREDICTORS[family] = handler
        return handler

    return register


# -- reading the user's input --------------------------------------------------------------
def read_image(text: str, shape: tuple[int, ...] | list[int] | None) -> Tensor:
    """The image file ``text`` as (1, C, H, W) in [0, 1], converted to C channels (1: grey,
    3: RGB) and resized to H × W when ``shape`` = (C, H, W) is given (else RGB, as it is)."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.functional import pil_to_tensor

    path = Path(text)
    size = "" if shape is None else f", resized to {shape[1]}×{shape[2]}"
    if not path.is_file():
        raise InputError(f"input={text}: no such file; this model takes an image file (PNG, "
                         f"JPEG ...){size}")
    try:
        with Image.open(path) as image:
            image = image.convert("L" if shape is not None and shape[0] == 1 else "RGB")
            if shape is not None:
                image = image.resize((int(shape[2]), int(shape[1])), Image.BILINEAR)
            x = pil_to_tensor(image).float() / 255
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InputError(f"input={text}: not an image ({type(err).__name__}: "
                         f"{str(err)[:100]}); this model takes an image file (PNG, JPEG ...)"
                         ) from None
    return x[None]


def _image_or_none(request: Request, shape: Any) -> Tensor | None:
    if request.input is None:
        return None
    return read_image(request.input, tuple(shape)).to(request.module.device)


def _numbers(text: str, what: str) -> list[float]:
    parts = [p for p in re.split(r"[\s,;]+", text.strip().strip("[]()")) if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise InputError(f"input={text}: not a list of numbers; {what}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise InputError(f"input={text}: {what}")
    return values


def _audio(request: Request, sample_rate: int) -> Tensor:
    from mlnotes_zoo.data.speech import read_audio

    text = request.needs_input("an audio file (WAV, FLAC, OGG)")
    if not Path(text).is_file():
        raise InputError(f"input={text}: no such file; this model takes an audio file (WAV, "
                         f"FLAC, OGG; any rate, resampled to {sample_rate} Hz)")
    return read_audio(text, sample_rate).to(request.module.device)


# -- generative image models -----------------------------------------------------------------
@predicts("LitVAE")
@torch.no_grad()
def _vae(request: Request) -> dict[str, Any]:
    """Samples x ~ p(x|z), z ~ N(0, I); for an image, log p(x) ≥ IWAE_k (k =
    ``model.iwae_samples``) and the reconstruction at z = μ."""
    from mlnotes_zoo.lit.base import paired_rows_grid

    module, net = request.module, request.module.net
    n = request.count(64, "samples")
    result: dict[str, Any] = {}
    if n:
        request.save_image(net.sample(n), "samples.png")
        result["samples"] = n
    x = _image_or_none(request, net.in_shape)
    if x is not None:
        x = module.prepare(x)
        result["log_likelihood_nats"] = float(module.iwae(x, module.iwae_samples)[0])
        result["bound"] = f"IWAE, k = {module.iwae_samples}"
        recon = net.mean_image(net.decode(net.encode(x)[0]))
        path = request.save_image(paired_rows_grid(x, recon.clamp(0, 1))[None],
                                  "reconstruction.png")
        result["summary"] = (f"log p(x) >= {result['log_likelihood_nats']:.2f} nats "
                             f"(IWAE k={module.iwae_samples}); reconstruction: {path}")
    return result


@predicts("LitGAN")
@torch.no_grad()
def _gan(request: Request) -> dict[str, Any]:
    """Samples G(z), z ~ N(0, I). A GAN has neither a likelihood nor an encoder, so an
    image tells it nothing: refused."""
    if request.input is not None:
        raise InputError(f"model={request.model} takes no input: a GAN has neither a "
                         "likelihood nor an encoder; run without input= for n samples")
    n = request.count(64, "samples")
    generator = torch.Generator(request.module.device).manual_seed(0)
    request.save_image(request.module.net.sample(n, generator=generator), "samples.png")
    return {"samples": n}


def _levels(request: Request, own: int | None = None) -> int:
    return int(own if own is not None else getattr(request.datamodule, "levels", 256))


@predicts("LitFlow")
@torch.no_grad()
def _flow(request: Request) -> dict[str, Any]:
    """Samples x = f⁻¹(z) at the module's temperature; for an image, −log₂ P(x) per
    dimension on the data's pixel levels (one uniform dequantization, as the test loss)."""
    from mlnotes_zoo.models.flows.model import flow_nll, uniform_dequantize

    module, net = request.module, request.module.net
    n = request.count(64, "samples")
    result: dict[str, Any] = {}
    if n:
        request.save_image(net.sample(n, temperature=module.temperature), "samples.png")
        result.update(samples=n, temperature=module.temperature)
    x = _image_or_none(request, net.in_shape)
    if x is not None:
        levels = _levels(request, module.levels)
        torch.manual_seed(0)
        y = uniform_dequantize(x, levels)
        z, log_det = net(y)
        parts = flow_nll(z, log_det, num_dims=y[0].numel(), levels=levels)
        result["bits_per_dim"] = float(parts["bpd"][0])
        result["nll_nats"] = float(parts["nll"][0]) if "nll" in parts else None
        result["summary"] = (f"{result['bits_per_dim']:.3f} bits/dim on {levels} pixel levels")
    return result


@predicts("LitVQVAE")
@torch.no_grad()
def _vqvae(request: Request) -> dict[str, Any]:
    """Reconstruction through the codebook, and the codes: of the image given, else of ``n``
    test images. (This VQ-VAE has no prior over codes, so it does not sample.)"""
    from mlnotes_zoo.lit.base import paired_rows_grid

    net = request.module.net
    x = _image_or_none(request, net.in_shape)
    if x is None:
        n = request.count(16, "test images")
        x = request.datamodule.reference_data("test").tensors[0][:n].to(request.module.device)
    out = net(x)
    request.save_image(paired_rows_grid(x, out.reconstruction.clamp(0, 1))[None],
                       "reconstruction.png")
    mse = float(((out.reconstruction - x) ** 2).mean())
    result = {"reconstruction_mse": mse, "codes_shape": list(out.indices.shape[1:]),
              "bits_per_image": float(net.bits_per_image)}
    if request.input is not None:
        result["codes"] = out.indices[0].tolist()
    result["summary"] = (f"{len(x)} image(s) -> {list(out.indices.shape[1:])} codes of "
                         f"{net.num_codes} ({net.bits_per_image:.0f} bits); MSE {mse:.4f}")
    return result


@predicts("LitDiffusion")
@torch.no_grad()
def _diffusion(request: Request) -> dict[str, Any]:
    """DDIM samples from the EMA network (a row per class, with the module's strongest
    guidance weight, when the model is class-conditional); for an image, the variational
    bound −log P(x) in bits/dim on the data's levels (T network calls)."""
    module = request.module
    net = module.sampler
    classes = int(net.num_classes or 0)
    result: dict[str, Any] = {}
    if classes:
        per_class = request.count(8, "samples per class")
        labels = torch.arange(classes).repeat_interleave(per_class)
        guidance = max(module.guidance_weights, default=1.0)
        if per_class:
            request.save_image(module.samples(len(labels), labels=labels, guidance=guidance),
                               "samples.png", nrow=per_class)
        result.update(samples_per_class=per_class, classes=classes, guidance=guidance)
    else:
        n = request.count(64, "samples")
        if n:
            request.save_image(module.samples(n), "samples.png")
        result["samples"] = n
    result["sampler"] = f"DDIM, {module.sample_steps} steps"
    x = _image_or_none(request, net.in_shape)
    if x is not None:
        levels = _levels(request)
        x0 = (x * (levels - 1)).round() / (levels - 1) * 2 - 1
        generator = torch.Generator().manual_seed(module.eval_seed + 2)
        terms = net.variational_bound(x0, levels=levels, variance=module.ancestral_variance,
                                      generator=generator)
        result["bits_per_dim"] = float(terms["total"][0]) / (x[0].numel() * math.log(2))
        result["summary"] = (f"-log P(x) <= {result['bits_per_dim']:.3f} bits/dim "
                             f"(variational bound, {levels} levels)")
    return result


def _images_or_test_split(request: Request, shape: Any, default: int) -> Tensor:
    """The image given, else the first ``n`` test images of the data."""
    x = _image_or_none(request, shape)
    if x is None:
        n = request.count(default, "test images", most=1000)
        x = request.datamodule.reference_data("test").tensors[0][:n].to(request.module.device)
    if len(x) == 0:
        raise InputError("n=0: give at least one image")
    return x


@predicts("LitDiffusionInpaint")
@torch.no_grad()
def _diffusion_inpaint(request: Request) -> dict[str, Any]:
    """The hidden pixels of each of the module's ``mask_kinds`` filled in (one DDIM fill
    from the EMA network), for the image given or ``n`` test images: rows of masked input
    (hidden pixels grey) and fill per mask kind."""
    from mlnotes_zoo.models.diffusion import fixed_mask

    module = request.module
    x = _images_or_test_split(request, module.net.in_shape, 8)
    rows, result = [], {"mask_kinds": list(module.mask_kinds)}
    for kind in module.mask_kinds:
        mask = fixed_mask(kind, *x.shape[-2:]).to(x.device)
        filled = module.fill(x, mask, 1)[0].to(x.device)
        rows += [x * mask + 0.5 * (1 - mask), filled]
        hidden = (1 - mask).expand_as(x)
        result[f"changed_visible_pixels_{kind}"] = int(((filled - x).abs() * (1 - hidden)
                                                        > 1e-4).sum())
    request.save_image(torch.cat(rows), "inpainting.png", nrow=len(x))
    result["summary"] = (f"{len(x)} image(s), masks {', '.join(module.mask_kinds)}: "
                         f"{request.out_dir / 'inpainting.png'}")
    return result


@predicts("LitDAE")
@torch.no_grad()
def _denoise(request: Request) -> dict[str, Any]:
    """The image given (else ``n`` test images) denoised as it is, r(x); and, for each of the
    module's ``test_sigmas``, with Gaussian noise σ added, denoised, and the PSNR of both
    against it; a lower-half fill too when the network was trained with masks. Picture rows:
    input, then noisy / denoised per σ (then masked / filled)."""
    from mlnotes_zoo.lit.dae import psnr
    from mlnotes_zoo.models.dae import gaussian_corruption

    module, net = request.module, request.module.net
    x = _images_or_test_split(request, net.in_shape, 8)
    generator = torch.Generator(x.device).manual_seed(module.eval_seed)
    rows = [x, net(x).clamp(0, 1)]
    result: dict[str, Any] = {}
    for sigma in module.test_sigmas:
        noisy = gaussian_corruption(x, sigma, generator=generator)
        denoised = net(noisy).clamp(0, 1)
        rows += [noisy.clamp(0, 1), denoised]
        result[f"psnr_noisy_sigma{sigma:g}"] = float(psnr(noisy.clamp(0, 1), x))
        result[f"psnr_denoised_sigma{sigma:g}"] = float(psnr(denoised, x))
    if net.mask_prob > 0:
        mask = module.inpaint_mask(x)
        rows += [x * mask + 0.5 * (1 - mask), module.inpaint(x, mask)]
    request.save_image(torch.cat(rows), "denoising.png", nrow=len(x))
    result["summary"] = ", ".join(
        f"σ={s:g}: PSNR {result[f'psnr_noisy_sigma{s:g}']:.1f} -> "
        f"{result[f'psnr_denoised_sigma{s:g}']:.1f} dB" for s in module.test_sigmas)
    return result


# -- sequences ---------------------------------------------------------------------------------
@predicts("LitSeq2Seq", "LitRNNSeq2Seq")
@torch.no_grad()
def _translate(request: Request) -> dict[str, Any]:
    """The digits of a number -> its English words, decoded greedily (and by beam search for
    the RNN, with its test-time beam)."""
    from mlnotes_zoo.data.seq2seq_numbers import MAX_VALUE, encode_pairs
    from mlnotes_zoo.lit.transformer import detokenize

    text = request.needs_input(f"a whole number 0..{MAX_VALUE:,}").strip().replace("_", "")
    if not text.isdigit() or int(text) > MAX_VALUE:
        raise InputError(f"input={request.input}: not a whole number from 0 to {MAX_VALUE:,} "
                         "(digits only)")
    module, net = request.module, request.module.net
    src, tgt = encode_pairs([int(text)])
    src = src.to(module.device)
    vocab = getattr(request.datamodule, "vocab", None)
    if vocab is None:
        from mlnotes_zoo.data.seq2seq_numbers import VOCAB as vocab
    skip = (net.pad_id, net.bos_id)
    steps = max(tgt.shape[1], 24)
    generated = net.generate(src, max_new_tokens=steps)[0]
    words = detokenize(generated, vocab, eos_id=net.eos_id, skip=skip)
    tokens = []
    for t in generated.tolist():
        if t == net.eos_id:
            break
        if t not in skip:
            tokens.append(vocab[t])
    result: dict[str, Any] = {"number": int(text), "words": words, "tokens": tokens,
                              "summary": f"{text} -> {words}"}
    if hasattr(net, "beam_search"):
        beam = net.beam_search(src, beam_size=module.beam_size, max_new_tokens=steps,
                               alpha=module.length_alpha)
        result["words_beam"] = detokenize(beam.tokens[0], vocab, eos_id=net.eos_id, skip=skip)
        result["summary"] += f"   (beam {module.beam_size}: {result['words_beam']})"
    return result


@predicts("LitGPT")
@torch.no_grad()
def _continue(request: Request) -> dict[str, Any]:
    """``n`` continuations of the prompt (UTF-8 bytes), ``model.sample_length`` bytes each,
    with the module's temperature and top-k."""
    module, net = request.module, request.module.net
    prompt = request.needs_input("a text prompt")
    data = prompt.encode("utf-8")
    if not data:
        raise InputError("input= is empty; gpt continues a text prompt")
    n = request.count(1, "continuations", most=64)
    if n == 0:
        raise InputError("n=0: gpt writes at least one continuation")
    context = torch.tensor(list(data), dtype=torch.long, device=module.device)[None]
    tokens = net.generate(context.expand(n, -1), module.sample_length,
                          temperature=module.temperature, top_k=module.top_k)
    texts = [bytes(t[len(data):].tolist()).decode("utf-8", errors="replace") for t in tokens]
    (request.out_dir / "continuations.txt").write_text(
        "\n\n".join(prompt + t for t in texts) + "\n", encoding="utf-8")
    request.files.append("continuations.txt")
    return {"prompt": prompt, "continuations": texts, "temperature": module.temperature,
            "top_k": module.top_k, "summary": "\n---\n".join(prompt + t for t in texts)}


@predicts("LitPonderNet", "LitACT")
@torch.no_grad()
def _parity(request: Request) -> dict[str, Any]:
    """The parity of a vector's non-zero entries, and how long the network thought: the
    halting distribution p_n over steps (PonderNet: p_n = λ_n ∏_{j<n}(1 − λ_j); ACT: its
    halting weights) and its mean."""
    from mlnotes_zoo.models.pondernet import expected_steps, halting_distribution

    net = request.module.net
    size = net.in_features
    what = f"a parity vector of {size} entries in {{-1, 0, 1}}, e.g. 1,0,-1,..."
    values = _numbers(request.needs_input(what), what)
    if len(values) != size or any(v not in (-1.0, 0.0, 1.0) for v in values):
        raise InputError(f"input={request.input}: {len(values)} entries; model={request.model} "
                         f"takes {what}")
    x = torch.tensor(values, device=request.module.device)[None]
    if request.module.family() == "LitACT":
        out = net(x)
        steps_used = int(out.steps[0])
        probs = out.halting_probs[:steps_used, 0]
        logit = out.y_hat[0, 0]
    else:
        out = net(x)
        probs = halting_distribution(out.lambdas)[:, 0]  # (N,)
        # the answer as the module's evaluation gives it (its halting rule)
        module = request.module
        answer_logit, halted_at = net.infer(x, halting=module.halting,
                                            threshold=module.threshold)[:2]
        logit, steps_used = answer_logit[0, 0], int(halted_at[0])
    probs_list = [round(float(p), 6) for p in probs]
    mean = float(expected_steps(probs[:, None])[0])
    answer = int(torch.sigmoid(logit) > 0.5)
    truth = int(sum(v != 0 for v in values) % 2)
    return {"parity": answer, "probability_odd": float(torch.sigmoid(logit)),
            "true_parity": truth, "halted_at_step": steps_used,
            "halting_distribution": probs_list, "expected_steps": mean,
            "summary": f"parity {answer} (true: {truth}); halted at step {steps_used}, "
                       f"expected steps {mean:.2f}; p_n = "
                       + " ".join(f"{p:.3f}" for p in probs_list)}


# -- speech ----------------------------------------------------------------------------------
@predicts("LitCTC")
@torch.no_grad()
def _transcribe(request: Request) -> dict[str, Any]:
    """The text of an audio file, greedy and by prefix beam search (``python -m
    mlnotes_zoo.transcribe`` does the same from the network alone)."""
    net = request.module.net
    wave = _audio(request, net.sample_rate)
    lengths = torch.tensor([len(wave)], device=wave.device)
    greedy = net.transcribe(wave[None], lengths, decoder="greedy")[0]
    beam_width = int(getattr(request.module, "beam_width", 8))
    beam = net.transcribe(wave[None], lengths, decoder="beam", beam_width=beam_width)[0]
    return {"text": greedy, "text_beam": beam, "seconds": len(wave) / net.sample_rate,
            "summary": greedy}


@predicts("LitHuBERT")
@torch.no_grad()
def _units(request: Request) -> dict[str, Any]:
    """The unit (codeword) HuBERT predicts at each frame of an audio file, nothing masked."""
    net = request.module.net
    wave = _audio(request, net.sample_rate)
    lengths = torch.tensor([len(wave)], device=wave.device)
    frames = int(net.output_lengths(lengths)[0])
    out = net(wave[None], lengths, torch.zeros(1, frames, dtype=torch.bool, device=wave.device))
    units = out.logits[0, : int(out.lengths[0])].argmax(-1).tolist()
    runs = [u for i, u in enumerate(units) if i == 0 or u != units[i - 1]]
    return {"units": units, "frames": len(units), "units_deduplicated": runs,
            "summary": " ".join(map(str, runs))}


# -- images: detection, embeddings, clusters, classes ----------------------------------------
@predicts("LitDetection")
@torch.no_grad()
def _detect(request: Request) -> dict[str, Any]:
    """Boxes, labels, scores (and masks) on an image; those above a score of 0.5 drawn."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    text = request.needs_input("an image file")
    image = read_image(text, None)[0]  # (3, H, W) as it is; the detector resizes
    net = request.module.net
    detections = net([image.to(request.module.device)])[0]
    names = tuple(getattr(request.datamodule, "class_names", ()) or ())

    def name(label: int) -> str:
        return names[label - 1] if 0 < label <= len(names) else str(label)

    keep = detections["scores"] >= 0.5
    picture = (image * 255).to(torch.uint8)
    if "masks" in detections and bool(keep.any()):
        picture = draw_segmentation_masks(picture, detections["masks"][keep, 0] > 0.5, alpha=0.4)
    boxes = detections["boxes"][keep]
    labels = [f"{name(int(c))} {float(s):.2f}" for c, s in
              zip(detections["labels"][keep], detections["scores"][keep], strict=True)]
    if len(boxes):
        picture = draw_bounding_boxes(picture, boxes, labels=labels, colors="red")
    request.save_image((picture.float() / 255)[None], "detections.png", nrow=1)
    found = [{"label": name(int(c)), "score": float(s), "box_xyxy": [float(v) for v in b]}
             for b, c, s in zip(detections["boxes"], detections["labels"],
                                detections["scores"], strict=True)]
    return {"detections": found, "summary": f"{int(keep.sum())} detection(s) with score >= "
                                            f"0.5: {', '.join(labels) or 'none'}"}


@predicts("LitSimCLR")
@torch.no_grad()
def _embed(request: Request) -> dict[str, Any]:
    """The encoder's features h = f(x) of an image (what downstream tasks use) and its ``n``
    nearest training images by cosine similarity of h, as a picture (query first)."""
    net = request.module.net
    x = read_image(request.needs_input("an image file"), net.in_shape).to(request.module.device)
    k = request.count(8, "neighbours", most=256)
    train = request.datamodule.reference_data("train")
    images, labels = train.tensors[0], train.tensors[1]
    features = torch.cat([net(chunk.to(x.device)).features for chunk in images.split(512)])
    query = net(x).features
    similarity = torch.nn.functional.cosine_similarity(query, features)
    top = similarity.topk(min(k, len(similarity)))
    request.save_image(torch.cat([x.cpu(), images[top.indices.cpu()]]), "nearest.png",
                       nrow=len(top.indices) + 1)
    neighbours = [{"index": int(i), "label": int(labels[i]), "cosine": float(s)}
                  for i, s in zip(top.indices.cpu(), top.values, strict=True)]
    votes = torch.bincount(labels[top.indices.cpu()]).argmax() if k else None
    return {"embedding": [round(float(v), 6) for v in query[0]], "neighbours": neighbours,
            "neighbour_vote": None if votes is None else int(votes),
            "summary": f"{len(query[0])}-d embedding; nearest training labels "
                       f"{[n['label'] for n in neighbours]}"}


@predicts("LitMixture")
@torch.no_grad()
def _cluster(request: Request) -> dict[str, Any]:
    """The cluster of an image (Gaussian mixture: its responsibilities and log-density;
    k-means: its squared distances); without one, samples (mixture) or the centres."""
    module, net = request.module, request.module.net
    x = _image_or_none(request, net.in_shape)
    if x is None:
        n = request.count(64, "samples")
        if module.is_gmm:
            samples, _ = net.sample(n, generator=torch.Generator().manual_seed(0))
            request.save_image(samples, "samples.png")
        request.save_image(net.projection.inverse(net.means if module.is_gmm
                                                  else net.cluster_centers), "centres.png")
        return {"samples": n if module.is_gmm else 0}
    if module.is_gmm:
        log_resp, log_likelihood = net(x)
        resp = log_resp[0].exp()
        cluster = int(resp.argmax())
        return {"cluster": cluster, "responsibilities": [round(float(r), 6) for r in resp],
                "log_likelihood_nats": float(log_likelihood[0]),
                "summary": f"cluster {cluster} (responsibility {float(resp[cluster]):.3f}); "
                           f"log p(x) = {float(log_likelihood[0]):.2f} nats"}
    sq_distances, clusters = net(x)
    cluster = int(clusters[0])
    nearest = float(sq_distances[0, cluster])
    return {"cluster": cluster, "squared_distances": [float(d) for d in sq_distances[0]],
            "summary": f"cluster {cluster} (squared distance {nearest:.3f})"}


@predicts("LitODENet")
@torch.no_grad()
def _classify(request: Request) -> dict[str, Any]:
    """Class probabilities of an image, and the solver's function evaluations."""
    net = request.module.net
    x = read_image(request.needs_input("an image file"), net.in_shape).to(request.module.device)
    before = net.nfe
    probs = net(x).softmax(-1)[0]
    label = int(probs.argmax())
    return {"class": label, "probabilities": [round(float(p), 6) for p in probs],
            "nfe": int(net.nfe - before),
            "summary": f"class {label} (p = {float(probs[label]):.3f})"}


@predicts("LitCNF")
def _cnf(request: Request) -> dict[str, Any]:
    """Samples x = F⁻¹(z) (a scatter picture for 2-D data, a grid for images) and, for a
    point ``x,y`` (or an image), its log-density in nats (bits/dim for images)."""
    from mlnotes_zoo.models.flows.model import flow_nll, uniform_dequantize
    from mlnotes_zoo.models.ode.cnf import cnf_log_likelihood

    module, net = request.module, request.module.net
    shape = getattr(request.datamodule, "in_shape", None)
    images = shape is not None and len(tuple(shape)) == 3
    result: dict[str, Any] = {}
    with torch.no_grad():
        n = request.count(64 if images else 2000, "samples", most=100_000)
        if n and images:
            samples = module.preprocess.inverse(net.sample(n)).clamp(0, 1)
            request.save_image(samples.view(-1, *shape), "samples.png")
        elif n:
            points = net.sample(n)
            limit = float(getattr(request.datamodule, "plot_range", 4.0))
            _scatter(request, points, limit, "samples.png")
            result["samples_file"] = "samples.json"
            (request.out_dir / "samples.json").write_text(json.dumps(points.tolist()) + "\n")
            request.files.append("samples.json")
        result["samples"] = n
    if request.input is None:
        return result
    with torch.inference_mode(False), torch.enable_grad():  # the trace needs autograd
        if images:
            x = read_image(request.input, tuple(shape)).to(module.device)
            levels = _levels(request, module.levels)
            torch.manual_seed(0)
            y, log_det_pixels = module.preprocess(uniform_dequantize(x, levels))
            z, log_det = net(y.flatten(1))
            bpd = float(flow_nll(z.detach(), (log_det + log_det_pixels).detach(),
                                 num_dims=y[0].numel(), levels=levels)["bpd"][0])
            result.update(bits_per_dim=bpd, summary=f"{bpd:.3f} bits/dim on {levels} levels")
        else:
            what = f"a point of {net.dim} coordinates, e.g. 0.5,-1.2"
            point = _numbers(request.input, what)
            if len(point) != net.dim:
                raise InputError(f"input={request.input}: {len(point)} coordinate(s); "
                                 f"model={request.model} takes {what}")
            z, log_det = net(torch.tensor([point], device=module.device))
            log_p = float(cnf_log_likelihood(z.detach(), log_det.detach())[0])
            result.update(point=point, log_density_nats=log_p,
                          summary=f"log p({', '.join(f'{v:g}' for v in point)}) = "
                                  f"{log_p:.3f} nats")
    return result


def _scatter(request: Request, points: Tensor, limit: float, name: str) -> None:
    """A 2-D histogram of ``points`` over [−limit, limit]² as a heat-map picture."""
    size = 128
    cells = ((points.detach().cpu() + limit) / (2 * limit) * size).floor().long()
    inside = ((cells >= 0) & (cells < size)).all(dim=1)
    col, row = cells[inside, 0], size - 1 - cells[inside, 1]
    counts = torch.zeros(size * size)
    counts.index_add_(0, row * size + col, torch.ones(len(col)))
    heat = (counts.view(1, 1, size, size) / counts.max().clamp_min(1)).sqrt()
    request.save_image(heat, name, nrow=1)


@predicts("LitLatentODE")
@torch.no_grad()
def _extrapolate(request: Request) -> dict[str, Any]:
    """Encode observations (a CSV of rows ``t,x1,...,xD``, times inside the data's window;
    else the first test series' observed points) and decode the posterior-mean trajectory
    z₀ = μ over the data's whole time grid: ``trajectory.csv`` and a picture."""
    module, net, dm = request.module, request.module.net, request.datamodule
    grid = dm.times.to(module.device)  # (T,)
    if request.input is None:
        series = dm.reference_data("test").tensors
        values, observed = series[0][:1], series[2][:1]
        truth = series[0][0]
    else:
        values, observed = _observations(request, grid, net.obs_dim)
        truth = None
    values, observed = values.to(module.device), observed.to(module.device)
    mu, _ = net.encode(values, grid, observed)
    trajectory = net.decode(mu, grid)[0]  # (T, D)
    rows = ["t," + ",".join(f"x{i + 1}" for i in range(net.obs_dim))]
    rows += [f"{float(t):.6g}," + ",".join(f"{float(v):.6g}" for v in row)
             for t, row in zip(grid, trajectory, strict=True)]
    (request.out_dir / "trajectory.csv").write_text("\n".join(rows) + "\n")
    request.files.append("trajectory.csv")
    result: dict[str, Any] = {"observed_points": int(observed.sum()),
                              "window_end": float(dm.window_end), "t_end": float(grid[-1])}
    if truth is not None:
        after = grid > dm.window_end
        result["mse_extrapolation_vs_truth"] = float(((trajectory - truth.to(grid.device))[after]
                                                      ** 2).mean())
    result["summary"] = (f"{result['observed_points']} observation(s) up to t = "
                         f"{dm.window_end:g}; trajectory to t = {float(grid[-1]):g} in "
                         f"{request.out_dir / 'trajectory.csv'}")
    return result


def _observations(request: Request, grid: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """(values (1, T, D), observed (1, T)) from a CSV of ``t,x1..xD`` rows: each row goes to
    the nearest grid time."""
    text = request.input or ""
    what = f"a CSV file of rows t,x1,...,x{dim} (a header line is allowed)"
    if not Path(text).is_file():
        raise InputError(f"input={text}: no such file; model={request.model} takes {what}")
    values = torch.zeros(1, len(grid), dim)
    observed = torch.zeros(1, len(grid))
    for number, line in enumerate(Path(text).read_text().splitlines(), start=1):
        if not line.strip() or (number == 1 and re.search(r"[a-df-zA-DF-Z]", line)):
            continue
        row = _numbers(line, what)
        if len(row) != dim + 1:
            raise InputError(f"input={text}: line {number} has {len(row)} values; {what}")
        t = row[0]
        if not float(grid[0]) <= t <= float(grid[-1]):
            raise InputError(f"input={text}: line {number}: t = {t:g} is outside the data's "
                             f"times [{float(grid[0]):g}, {float(grid[-1]):g}]")
        i = int((grid - t).abs().argmin())
        values[0, i] = torch.tensor(row[1:])
        observed[0, i] = 1
    if not observed.any():
        raise InputError(f"input={text}: no observations; {what}")
    return values, observed


# -- the job ---------------------------------------------------------------------------------
def predict(cfg: DictConfig) -> dict[str, Any]:
    """Run the handler of ``cfg.ckpt_path``'s family on ``cfg.input`` and ``cfg.n``; write
    ``prediction.json`` into ``cfg.paths.output_dir``; returns what it holds."""
    from hydra.utils import instantiate

    from mlnotes_zoo.evaluate import group_choice, load_module
    from mlnotes_zoo.runtime import apply_runtime

    apply_runtime(cfg.get("runtime"))  # torch's threads, as train.py sets them
    n = cfg.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise UsageError(f"n={n}: must be an integer >= 0 (or null: the model's default)")
    raw_input = cfg.get("input")
    text = None if raw_input is None else str(raw_input)
    if cfg.get("seed") is not None:
        torch.manual_seed(int(cfg.seed))
    module, _ = load_module(cfg)
    datamodule = instantiate(cfg.data)
    family = module.family()
    # a subclass (a family built on another, as ddpm_inpaint on ddpm) falls back on the
    # handler of the family it derives from
    handler = next((PREDICTORS[k.__name__] for k in type(module).__mro__
                    if k.__name__ in PREDICTORS), None)
    if handler is None:
        raise UsageError(f"no prediction for {family} (model={group_choice(cfg, 'model')}); "
                         f"families with one: {', '.join(sorted(PREDICTORS))}")
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    request = Request(module=module, datamodule=datamodule, input=text, n=n, out_dir=out_dir,
                      model=str(group_choice(cfg, "model")))
    result = handler(request)
    report = {"model": request.model, "checkpoint": str(cfg.ckpt_path), "input": text,
              "n": n, **{k: v for k, v in result.items() if k != "summary"},
              "files": request.files}
    (out_dir / "prediction.json").write_text(json.dumps(report, indent=1) + "\n")
    report["summary"] = result.get("summary")
    return report


def main(cfg: DictConfig) -> dict[str, Any]:
    """:func:`predict`, then the answer and the run dir on the console."""
    report = predict(cfg)
    out_dir = Path(cfg.paths.output_dir)
    if report.get("summary"):
        print(report["summary"])
    for name in report["files"]:
        print(f"wrote {out_dir / name}")
    print(f"run dir: {out_dir}")
    return report


def _task(cfg: DictConfig) -> None:
    from mlnotes_zoo.train import run_guarded

    run_guarded(main, cfg, "the prediction")


def cli(argv: list[str] | None = None) -> None:
    """``mlnotes-zoo-predict ckpt_path=<file> [input=<path or value>] [n=...]``."""
    from mlnotes_zoo.evaluate import run_entry_point

    run_entry_point("predict", _task, argv, "predict.py")

