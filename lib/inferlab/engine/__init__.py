"""Continuous batching with a paged KV cache: a small vLLM, in our own code.

The split follows nano-vllm, the names follow vLLM:

- :mod:`~inferlab.engine.sequence`        a request's tokens, progress and timings
- :mod:`~inferlab.engine.block_manager`   the paged KV pool (on :class:`inferlab.paging.BlockAllocator`)
- :mod:`~inferlab.engine.scheduler`       iteration-level scheduling (Orca), chunked prefill
  (Sarathi), preemption by recompute, and a static-batching policy for comparison
- :mod:`~inferlab.engine.config`          ``EngineConfig``: every engine setting, listed once; ``ModelConfig``
- :mod:`~inferlab.engine.layers`          linear layers with a ``weight_loader``, RMSNorm, rotary embedding
- :mod:`~inferlab.engine.models`          the Llama/Mistral/Qwen2 decoder built from those layers
- :mod:`~inferlab.engine.loader`          checkpoint tensor names to parameters, through their loaders
- :mod:`~inferlab.engine.model_runner`    KV pool, step inputs, one forward per step
- :mod:`~inferlab.sampling`              greedy, temperature, top-k, top-p, per-request seeds
- :mod:`~inferlab.engine.llm_engine`      ``LLMEngine.step()``: schedule, run, sample, finish
- :mod:`~inferlab.engine.llm`             ``LLM.generate`` / ``LLM.stream``
- :mod:`~inferlab.engine.async_engine`    ``AsyncLLMEngine``: one step loop owning the engine, per-request queues (serving)
- :mod:`~inferlab.engine.detokenizer`     incremental detokenization and stop strings, linear in the output
- :mod:`~inferlab.engine.compat`          the tutorial's ``VLLMInference``, working
- :mod:`~inferlab.engine.batchers`        the tutorial's ``ContinuousBatcher`` interface done right,
  and ``StaticBatcher``
"""

from inferlab.engine.async_engine import AsyncLLMEngine
from inferlab.engine.batchers import ContinuousBatcher, StaticBatcher
from inferlab.engine.compat import VLLMInference
from inferlab.engine.config import EngineConfig, ModelConfig
from inferlab.engine.llm import LLM, build_engine
from inferlab.engine.llm_engine import LLMEngine, RequestTooLarge, StepRecord
from inferlab.engine.model_runner import ModelRunner
from inferlab.engine.outputs import CompletionOutput, RequestOutput
from inferlab.engine.sampling_params import SamplingParams

__all__ = [
    "LLM", "EngineConfig", "SamplingParams", "RequestOutput", "CompletionOutput", "LLMEngine", "RequestTooLarge",
    "StepRecord", "ModelConfig", "ModelRunner", "ContinuousBatcher", "StaticBatcher",
    "build_engine", "VLLMInference", "AsyncLLMEngine",
]
