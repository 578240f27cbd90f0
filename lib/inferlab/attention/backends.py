"""The attention backends, by name: adding one is a file with an ``attend`` function and a line here.

``"auto"`` (the engine's default) resolves once, to ``triton`` on CUDA when triton is installed and
to ``sdpa`` elsewhere. Every backend has the signature of :func:`inferlab.attention.sdpa.attend`:
``attend(q, k, v, meta, k_cache, v_cache, scale) -> out``. For most, this step's K/V are already in
the cache (written through the slot lists); a backend in :data:`TABLE_BACKENDS` reads block
tables and lengths and stores the K/V itself (the Triton decode kernel as it attends). Backends
are imported only when chosen, so an optional dependency (Triton, flash-attn) is needed only by
whoever picks that backend.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

BACKENDS: dict[str, str] = {
    "reference": "inferlab.attention.paged:attend",  # float32, explicit masks: the one to test against
    "sdpa": "inferlab.attention.sdpa:attend",  # torch SDPA over gathered slots: the engine's default
    "triton": "inferlab.attention.paged_triton:attend",  # kernels reading the blocks in place: CUDA's default
    "flash": "inferlab.attention.flash:attend",  # prefill through FlashAttention's tiles, decode through SDPA
}

TABLE_BACKENDS = {"triton"}  # read AttentionMetadata's block tables and store this step's K/V themselves


def resolve_backend(name: str, device) -> str:
    """``"auto"`` -> ``"triton"`` on CUDA with triton installed, else ``"sdpa"``; other names unchanged."""
    if name != "auto":
        return name
    from inferlab.attention.flash_triton import triton_available

    return "triton" if str(device).startswith("cuda") and triton_available() else "sdpa"


def get_backend(name: str) -> Callable:
    """The ``attend`` function of backend ``name`` (a key of :data:`BACKENDS`)."""
    if name not in BACKENDS:
        raise ValueError(f"attention_backend must be one of {sorted(BACKENDS)}, got {name!r}")
    module, _, func = BACKENDS[name].partition(":")
    return getattr(import_module(module), func)
