"""Test a trained checkpoint: ``python eval.py ckpt_path=<file.ckpt> [data=...]`` (README,
"Using a trained model")."""

from mlnotes_zoo.evaluate import cli

if __name__ == "__main__":
    cli()
