"""Package layout: the library lives in lib/, the embedded models and configs in data/.

data/ is shipped inside the package as ``inferlab._data`` so that a plain
``pip install .`` (not only ``-e``) can still load the embedded default models.
Its folders are listed as packages too (setuptools warns about data folders that
could be imported but are not listed); ``tiny-draft`` is not a valid package name
and is shipped through ``inferlab._data``'s own patterns.
"""
from setuptools import find_namespace_packages, find_packages, setup

DATA_PACKAGES = ["inferlab._data", *(f"inferlab._data.{name}" for name in find_namespace_packages("data"))]

setup(
    packages=find_packages("lib") + DATA_PACKAGES,
    package_dir={"": "lib", "inferlab._data": "data"},
    package_data={
        "inferlab.quant": ["tuned.json", "gemv_int4.cu"],  # tiles swept per GPU; the CUDA kernel, built on first use
        "inferlab._data": [
            "models/*/*.json",
            "models/*/*.safetensors",
            "models/*/*.md",
            "models/*.md",
            "configs/*.json",
            "traces/*",
            "results/*.json",
        ]
    },
)
