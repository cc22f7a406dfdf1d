"""Export a trained network and check it: ``python export.py ckpt_path=<ckpt> format=onnx``."""

from mlnotes_zoo.export import cli

if __name__ == "__main__":
    cli()
