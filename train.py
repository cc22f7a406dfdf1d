"""Train a model of the zoo: ``python train.py model=vae`` (see configs/ and the README)."""

from mlnotes_zoo.train import cli

if __name__ == "__main__":
    cli()
