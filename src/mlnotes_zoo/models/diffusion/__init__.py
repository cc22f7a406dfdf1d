"""Diffusion: DDPM with DDIM sampling, v-prediction and classifier-free guidance
(:mod:`.model`), on a small U-Net (:mod:`.unet`); GLIDE's inpainting model and RePaint
(:mod:`.inpaint`)."""

from mlnotes_zoo.models.diffusion.inpaint import (
    InpaintDDPM,
    conditioning,
    ddpm_inpaint,
    fixed_mask,
    masked_mse,
    random_masks,
    renoise,
    repaint,
    repaint_schedule,
    sample_inpaint,
)
from mlnotes_zoo.models.diffusion.model import (
    DDPM,
    MAX_FINAL_ALPHA_BAR,
    OBJECTIVE,
    cosine_betas,
    ddim_timesteps,
    ddpm,
    diffusion_loss,
    discretized_gaussian_log_likelihood,
    eps_from_v,
    linear_betas,
    mean_fill,
    nearest_fill,
    normal_kl,
    q_posterior,
    q_sample,
    v_from_eps,
    x0_from_eps,
)
from mlnotes_zoo.models.diffusion.unet import (
    AttentionBlock,
    Downsample,
    ResBlock,
    UNet,
    Upsample,
    sinusoidal_embedding,
)

__all__ = ["DDPM", "ddpm", "OBJECTIVE", "MAX_FINAL_ALPHA_BAR", "linear_betas", "cosine_betas",
           "ddim_timesteps", "q_sample", "q_posterior", "x0_from_eps", "v_from_eps",
           "eps_from_v", "diffusion_loss", "normal_kl",
           "discretized_gaussian_log_likelihood", "UNet", "ResBlock", "AttentionBlock",
           "Downsample", "Upsample", "sinusoidal_embedding", "mean_fill", "nearest_fill",
           "InpaintDDPM", "ddpm_inpaint", "conditioning", "fixed_mask", "masked_mse",
           "random_masks", "renoise", "repaint", "repaint_schedule", "sample_inpaint"]
