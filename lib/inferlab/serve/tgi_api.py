"""Text Generation Inference-compatible routes: ``/``, ``/generate``, ``/generate_stream``, ``/info``.

``huggingface_hub.InferenceClient(url).text_generation(...)`` posts to the URL itself
(``/``), with ``stream`` deciding between one JSON answer and server-sent events of one
token each; ``details=True`` adds the finish reason, the number of generated tokens and
every token with its log-probability. TGI samples only when asked (``do_sample``, or a
temperature, top-k or top-p that changes the distribution); otherwise it is greedy.
``/health`` lives in :mod:`inferlab.serve.app`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

import inferlab
from inferlab.engine.async_engine import StreamOutput
from inferlab.serve.app import ServingEngine, merge, sampling_params, sse, until_disconnect
from inferlab.serve.protocol import TGIGenerateResponse, TGIParameters, TGIRequest

router = APIRouter()


@router.post("/", response_model=list[TGIGenerateResponse])
async def compat_generate(body: TGIRequest, request: Request):
    """What ``InferenceClient.text_generation`` calls: a stream, or a one-element list."""
    if body.stream:
        return await generate_stream(body, request)
    return [await generate(body, request)]


@router.post("/generate", response_model=TGIGenerateResponse)
async def generate(body: TGIRequest, request: Request) -> dict[str, Any]:
    serving: ServingEngine = request.app.state.serving
    prompt, stream = await _submit(serving, body)
    tokens: list[dict[str, Any]] = []
    tops: list[list[dict[str, Any]]] = []
    text, final = "", None
    async for _, out in until_disconnect_iter(request, stream):
        for d in out.deltas:
            text += d.text
            tokens += [_token(serving, t, lp) for t, lp in _pairs(d)]
            tops += [_top_tokens(serving, lp) for _, lp in _pairs(d)]
        final = out if out.finished else final
    serving.record(final)
    answer: dict[str, Any] = {"generated_text": _full_text(body, text)}
    if body.parameters.details:
        answer["details"] = {**_details(body, final, len(tokens)), "prefill": [], "tokens": tokens,
                             **({"top_tokens": tops} if body.parameters.top_n_tokens else {})}
    return answer


@router.post("/generate_stream")
async def generate_stream(body: TGIRequest, request: Request):
    serving: ServingEngine = request.app.state.serving
    _, stream = await _submit(serving, body)
    return sse(_token_events(serving, body, stream), done=False)


@router.get("/info")
async def info(request: Request) -> dict[str, Any]:
    serving: ServingEngine = request.app.state.serving
    eng = serving.engine.engine
    return {"model_id": serving.model_names[0], "model_sha": None,
            "model_dtype": str(eng.runner.dtype) if hasattr(eng.runner, "dtype") else None,
            "model_device_type": str(getattr(eng.runner, "device", "cpu")),
            "model_pipeline_tag": "text-generation", "max_concurrent_requests": eng.engine_config.max_num_seqs * 4,
            "max_best_of": 1, "max_stop_sequences": 8, "max_input_tokens": serving.max_model_len - 1,
            "max_input_length": serving.max_model_len - 1, "max_total_tokens": serving.max_model_len,
            "max_batch_total_tokens": eng.block_manager.num_blocks * eng.block_manager.block_size,
            "max_batch_size": eng.engine_config.max_num_seqs, "validation_workers": 1,
            "max_client_batch_size": 1, "router": "inferlab", "version": inferlab.__version__ if hasattr(inferlab, "__version__") else "0.1.0",
            "sha": None, "docker_label": None}


async def until_disconnect_iter(request: Request, stream) -> AsyncIterator[tuple[int, StreamOutput]]:
    """The stream's items, collected under :func:`until_disconnect` (a gone client aborts it)."""

    async def collect():
        return [item async for item in merge([stream])]

    for item in await until_disconnect(request, collect()):
        yield item


async def _submit(serving: ServingEngine, body: TGIRequest):
    p = body.parameters
    prompt = serving.tokenize(body.inputs, "inputs")
    sampling = p.do_sample or (p.temperature not in (None, 1.0)) or bool(p.top_k) or (p.top_p or 1.0) < 1.0
    params = sampling_params(
        temperature=(p.temperature or 1.0) if sampling else 0.0, top_p=p.top_p if sampling else None,
        top_k=p.top_k if sampling else None, seed=p.seed, stop=p.stop or None,
        logprobs=p.top_n_tokens or 0, max_tokens=serving.max_tokens(prompt, p.max_new_tokens, "max_new_tokens"))
    return prompt, await serving.submit(prompt, params)


async def _token_events(serving: ServingEngine, body: TGIRequest, stream) -> AsyncIterator[dict[str, Any]]:
    text, count, index = "", 0, 0
    async for _, out in merge([stream]):
        for d in out.deltas:
            pairs = _pairs(d)
            for k, (token, lps) in enumerate(pairs):
                piece = d.text if k == len(pairs) - 1 else ""
                text, count, index = text + piece, count + 1, index + 1
                last = out.finished and k == len(pairs) - 1
                event = {"index": index, "token": {**_token(serving, token, lps), "text": piece},
                         "generated_text": _full_text(body, text) if last else None,
                         "details": _details(body, out, count) if last else None}
                if body.parameters.top_n_tokens:
                    event["top_tokens"] = _top_tokens(serving, lps)
                yield event
        if out.finished:
            serving.record(out)


def _pairs(d) -> list[tuple[int, dict[int, float]]]:
    return list(zip(d.token_ids, d.logprobs or [{}] * len(d.token_ids), strict=False))


def _token(serving: ServingEngine, token: int, lps: dict[int, float]) -> dict[str, Any]:
    special = token in serving.engine.engine.eos_token_ids
    return {"id": token, "text": "" if special else serving.token_text(token),
            "logprob": lps.get(token, 0.0), "special": special}


def _top_tokens(serving: ServingEngine, lps: dict[int, float]) -> list[dict[str, Any]]:
    return [_token(serving, t, lps) for t in sorted(lps, key=lps.get, reverse=True)]


def _full_text(body: TGIRequest, text: str) -> str:
    return body.inputs + text if body.parameters.return_full_text else text


def _details(body: TGIRequest, out: StreamOutput | None, generated: int) -> dict[str, Any]:
    completion = out.output.outputs[0] if out is not None and out.output is not None else None
    return {"finish_reason": _finish_reason(completion), "generated_tokens": generated,
            "seed": body.parameters.seed, "input_length": out.num_prompt_tokens if out else 0}


def _finish_reason(completion) -> str:
    """TGI's names: ``length``, ``eos_token``, ``stop_sequence``."""
    if completion is None or completion.finish_reason == "length":
        return "length"
    return "eos_token" if completion.stop_reason is None else "stop_sequence"


__all__ = ["router", "TGIParameters"]
