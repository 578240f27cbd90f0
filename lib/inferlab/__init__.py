"""inferlab: LLM inference optimization, taught by running every technique live.

The top level stays light (importing it does not import torch); each technique
lives in its own module:

- ``inferlab.device``       device and dtype choice, synchronize and timing, ``env_report``
- ``inferlab.hub``          ``load_model``: embedded, local, hub or random-weight models
- ``inferlab.configs``      published model configs, parameter counts, the GPU datasheet table
- ``inferlab.kvcache``      KV-cache sizing; ``inferlab.roofline``: prefill vs decode bounds
- ``inferlab.paging``       the paged KV block allocator (PagedAttention)
- ``inferlab.engine``       continuous batching: ``LLM``, ``SamplingParams``
- ``inferlab.sampling``     logits to tokens, for the engine and speculative decoding
- ``inferlab.speculative``  speculative decoding
- ``inferlab.bench``        honest benchmarks (``python -m inferlab.bench ...``)
- ``inferlab.tools``        notebook tooling and the embedded models' trainer
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> module that defines it; resolved on first use so `import inferlab` is cheap.
_LAZY = {
    "load_model": "inferlab.hub",
    "env_report": "inferlab.device",
    "pick_device": "inferlab.device",
    "torch_dtype": "inferlab.device",
    "EMBEDDED_MODELS": "inferlab.hub",
    "LLM": "inferlab.engine",
    "SamplingParams": "inferlab.engine",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'inferlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
