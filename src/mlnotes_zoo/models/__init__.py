"""Networks of the zoo: torch only (no Lightning), one family per module.

Importing this package registers every family with :mod:`mlnotes_zoo.registry`.
"""

from mlnotes_zoo.models.vae import VAE

__all__ = ["VAE"]
