"""Quantization (notebook 06): from-scratch formats, the module swap, and the real loaders.

- :mod:`~inferlab.quant.rtn`        int8 absmax/zero-point, int4 group-wise packed, NF4 + double quant
- :mod:`~inferlab.quant.gptq`       GPTQ: Hessian-weighted error compensation, column by column
- :mod:`~inferlab.quant.awq`        AWQ: activation-aware per-channel scaling with a grid search
- :mod:`~inferlab.quant.linear`     quantized linear modules; :mod:`~inferlab.quant.quantize` the swap
- :mod:`~inferlab.quant.kernels`    fused dequantize-matmul (Triton) for decoding on CUDA
- :mod:`~inferlab.quant.formats`    bitsandbytes, GPTQ/AWQ checkpoints, GGUF
- :mod:`~inferlab.quant.perplexity` the quality yardstick
"""

from inferlab.quant.formats import (
    export_gguf,
    load_4bit_model,
    load_8bit_model,
    load_awq_model,
    load_gguf,
    load_gptq_model,
    save_awq,
    save_gptq,
)
from inferlab.quant.linear import Int4Linear, Int8Linear, NF4Linear, QuantLinear, model_weight_bytes
from inferlab.quant.perplexity import perplexity
from inferlab.quant.quantize import METHODS, quantize

__all__ = [
    "METHODS", "Int4Linear", "Int8Linear", "NF4Linear", "QuantLinear", "export_gguf", "load_4bit_model",
    "load_8bit_model", "load_awq_model", "load_gguf", "load_gptq_model", "model_weight_bytes", "perplexity",
    "quantize", "save_awq", "save_gptq",
]
