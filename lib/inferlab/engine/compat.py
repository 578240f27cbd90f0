"""``VLLMInference``: a widely copied tutorial's wrapper class, working, on our engine.

The tutorial's version wrapped vLLM with ``trust_remote_code=True`` (running code from the hub
by default) and its ``streaming_generate`` read ``self.model_name``, which ``__init__``
never stored, then stopped at a comment. Here the name is kept, remote code stays off, and
streaming really streams (text deltas from :meth:`inferlab.engine.LLM.stream`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from inferlab.engine.llm import LLM
from inferlab.engine.sampling_params import SamplingParams


class VLLMInference:
    def __init__(self, model_name: str = "tiny", tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                 trust_remote_code: bool = False, **llm_kwargs: Any):
        self.model_name = model_name
        self.llm = LLM(model=model_name, gpu_memory_utilization=gpu_memory_utilization,  # TP > 1: notebook 08
                       trust_remote_code=trust_remote_code, tensor_parallel_size=tensor_parallel_size, **llm_kwargs)

    def generate(self, prompts: list[str], max_tokens: int = 256, temperature: float = 0.7, top_p: float = 0.9) -> list[dict]:
        """Batch generation; one dict per prompt: prompt, generated text, number of tokens."""
        params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens)
        return [{"prompt": o.prompt, "generated": o.outputs[0].text, "tokens": len(o.outputs[0].token_ids)}
                for o in self.llm.generate(prompts, params)]

    def streaming_generate(self, prompt: str, max_tokens: int = 256, temperature: float = 0.7, top_p: float = 0.9,
                           **kwargs: Any) -> Iterator[str]:
        """Yield the generated text in deltas as the engine produces it."""
        params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens, **kwargs)
        yield from self.llm.stream(prompt, params)
