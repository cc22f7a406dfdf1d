"""Packaging glue; all metadata is in pyproject.toml.

configs/ at the top level is the one source of the Hydra configs. The wheel ships it as
package data ``mlnotes_zoo/configs`` so ``mlnotes-zoo-train`` works from any directory.
"""

from setuptools import find_packages, setup

setup(
    package_dir={"": "src", "mlnotes_zoo.configs": "configs"},
    packages=[*find_packages("src"), "mlnotes_zoo.configs"],
    package_data={"mlnotes_zoo.configs": ["*.yaml", "*/*.yaml"]},
)
