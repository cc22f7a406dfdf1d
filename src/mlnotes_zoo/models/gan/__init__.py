"""GANs: DCGAN and WGAN-GP networks and objectives (:mod:`.model`), and the small classifier
whose features measure the samples (FID, class coverage; :mod:`.fid_classifier`)."""

from mlnotes_zoo.models.gan.fid_classifier import (
    ClassifierFeatures,
    DigitsClassifier,
    class_coverage,
    classifier_accuracy,
    classifier_fid,
    load_or_train_classifier,
    train_classifier,
)
from mlnotes_zoo.models.gan.model import (
    GAN,
    OBJECTIVE,
    Discriminator,
    DownBlock,
    GANOutput,
    Generator,
    UpBlock,
    critic_loss,
    dcgan,
    discriminator_loss,
    gradient_penalty,
    interpolate,
    non_saturating_generator_loss,
    wasserstein_generator_loss,
    wgan_gp,
)

__all__ = ["GAN", "GANOutput", "Generator", "Discriminator", "UpBlock", "DownBlock", "dcgan",
           "wgan_gp", "OBJECTIVE", "discriminator_loss", "non_saturating_generator_loss",
           "critic_loss", "wasserstein_generator_loss", "interpolate", "gradient_penalty",
           "DigitsClassifier", "ClassifierFeatures", "train_classifier", "classifier_accuracy",
           "load_or_train_classifier", "classifier_fid", "class_coverage"]
