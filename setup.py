"""Package layout: the library lives in lib/, the embedded models and configs in data/.

data/ is shipped inside the package as ``inferlab._data`` so that a plain
``pip install .`` (not only ``-e``) can still load the embedded default models.
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages("lib") + ["inferlab._data"],
    package_dir={"": "lib", "inferlab._data": "data"},
    package_data={
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
