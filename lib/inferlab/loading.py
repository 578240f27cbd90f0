"""Moved: device and dtype choice to :mod:`inferlab.device`, loading to :mod:`inferlab.hub`.

A temporary re-export while imports move (issue 9); deleted once nothing imports it.
"""

from inferlab.device import env_report, pick_device, torch_dtype
from inferlab.hub import EMBEDDED_MODELS, ModelNotFound, load_model, resolve_model_path
from inferlab.hub import _created_on as random_init  # the engine's context-manager use
from inferlab.hub import offline as _offline

__all__ = ["EMBEDDED_MODELS", "ModelNotFound", "env_report", "load_model", "pick_device", "pick_dtype",
           "random_init", "resolve_model_path", "_offline"]


def pick_dtype(device: str, dtype=None):
    """Moved: :func:`inferlab.device.torch_dtype` (note the argument order: dtype, device)."""
    return torch_dtype(dtype, device)
