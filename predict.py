"""Use a trained checkpoint on your own input:
``python predict.py ckpt_path=<file.ckpt> [input=<path or value>] [n=...]`` (README, "Using a
trained model")."""

from mlnotes_zoo.predict import cli

if __name__ == "__main__":
    cli()
