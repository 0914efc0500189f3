"""Packaging (the metadata is in setup.cfg): coda_flax's packages plus the repository's
top-level gin/ and configs/ folders, which setup.cfg's package_dir maps to coda_flax.gin and
coda_flax.configs. The wheel carries them inside the package (coda_flax/gin, coda_flax/configs);
an editable install finds them where they are (coda_flax.resources)."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["coda_flax", "coda_flax.*"]),
                "coda_flax.gin", "coda_flax.configs"])
