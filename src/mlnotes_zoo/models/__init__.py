"""Networks of the zoo: torch only (no Lightning), one family per module.

Importing this package registers every family with :mod:`mlnotes_zoo.registry`.
"""

from mlnotes_zoo.models.ctc import ConformerCTC, DeepSpeechCTC
from mlnotes_zoo.models.detection import FasterRCNN, MaskRCNN
from mlnotes_zoo.models.flows import Glow, RealNVP
from mlnotes_zoo.models.gan import GAN
from mlnotes_zoo.models.pondernet import PonderNet
from mlnotes_zoo.models.simclr import SimCLR, SupCon
from mlnotes_zoo.models.transformer import GPT, Seq2SeqTransformer
from mlnotes_zoo.models.vae import VAE
from mlnotes_zoo.models.vqvae import VQVAE

__all__ = ["DeepSpeechCTC", "ConformerCTC",
           "Glow", "RealNVP", "GAN", "FasterRCNN", "MaskRCNN", "PonderNet",
           "SimCLR", "SupCon", "Seq2SeqTransformer", "GPT", "VAE", "VQVAE"]
