"""OpenAI-compatible routes: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``.

The same client code then runs against this server, vLLM's (``vllm serve``) or OpenAI's,
by changing ``base_url``. Every request becomes one engine request per prompt; ``n > 1``
asks the engine for ``n`` samples that share the prompt's KV blocks (fork, copy-on-write).
Streams are server-sent events, one chunk per engine step that produced text, ending
with ``data: [DONE]``; ``stream_options.include_usage`` adds a last chunk with the usage.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request

from inferlab.engine.async_engine import SampleDelta
from inferlab.serve.app import (
    ServeError,
    ServingEngine,
    merge,
    sampling_params,
    sse,
    until_disconnect,
)
from inferlab.serve.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelList,
    usage,
)

router = APIRouter()
STARTED = int(time.time())
# Used only when a tokenizer has no chat template of its own (random-weight models):
# each message as a comment line, then the assistant's turn.
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '# ' + m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '# assistant:\n' }}{% endif %}"
)


@dataclass
class Choice:
    """One choice being assembled from deltas (non-streaming responses)."""

    text: str = ""
    num_tokens: int = 0
    logprobs: list[tuple[int, dict[int, float]]] = field(default_factory=list)
    finish_reason: str | None = None


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> dict[str, Any]:
    serving: ServingEngine = request.app.state.serving
    return {"object": "list", "data": [
        {"id": name, "object": "model", "created": STARTED, "owned_by": "inferlab",
         "max_model_len": serving.max_model_len} for name in serving.model_names]}


@router.post("/v1/completions", response_model=CompletionResponse)
async def completions(body: CompletionRequest, request: Request):
    serving: ServingEngine = request.app.state.serving
    serving.check_model(body.model)
    prompts = [serving.tokenize(p) for p in _prompt_list(body.prompt)]
    streams = await _submit(serving, body, prompts, body.max_tokens, body.logprobs)
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": body.model}
    if body.stream:
        return sse(_completion_chunks(serving, body, head, streams, sum(map(len, prompts))))
    choices = await until_disconnect(request, _collect(serving, streams, body.n))
    return {**head, "choices": [_completion_choice(serving, i, c, body.logprobs is not None)
                                for i, c in enumerate(choices)],
            "usage": usage(sum(map(len, prompts)), sum(c.num_tokens for c in choices))}


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse)
async def chat_completions(body: ChatCompletionRequest, request: Request):
    serving: ServingEngine = request.app.state.serving
    serving.check_model(body.model)
    prompt = serving.tokenize(_apply_chat_template(serving, body), "messages")
    top = (body.top_logprobs or 0) if body.logprobs else None
    streams = await _submit(serving, body, [prompt], body.max_completion_tokens or body.max_tokens, top)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": body.model}
    if body.stream:
        return sse(_chat_chunks(serving, body, {**head, "object": "chat.completion.chunk"}, streams, len(prompt)))
    choices = await until_disconnect(request, _collect(serving, streams, body.n))
    return {**head, "choices": [
        {"index": i, "message": {"role": "assistant", "content": c.text},
         "logprobs": _chat_logprobs(serving, c.logprobs) if body.logprobs else None,
         "finish_reason": c.finish_reason} for i, c in enumerate(choices)],
        "usage": usage(len(prompt), sum(c.num_tokens for c in choices))}


# ---------------------------------------------------------------- requests in
def _prompt_list(prompt: Any) -> list[str | list[int]]:
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        return [prompt]
    if not prompt:
        raise ServeError(400, "prompt must not be empty", "prompt")
    return list(prompt)


def _apply_chat_template(serving: ServingEngine, body: ChatCompletionRequest) -> str:
    tok = serving.tokenizer
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    template = None if getattr(tok, "chat_template", None) else FALLBACK_CHAT_TEMPLATE
    try:
        return tok.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)
    except Exception as err:  # noqa: BLE001 — a template error is the request's fault
        raise ServeError(400, f"chat template failed: {err}", "messages") from err


async def _submit(serving: ServingEngine, body, prompts: list[list[int]], max_tokens: int | None,
                  logprobs: int | None):
    if body.presence_penalty or body.frequency_penalty:
        raise ServeError(400, "presence_penalty and frequency_penalty are not supported (use 0)",
                         "presence_penalty" if body.presence_penalty else "frequency_penalty")
    streams = []
    try:
        for ids in prompts:
            params = sampling_params(
                temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, n=body.n, seed=body.seed,
                stop=body.stop, ignore_eos=body.ignore_eos, logprobs=logprobs,
                max_tokens=serving.max_tokens(ids, max_tokens))
            streams.append(await serving.submit(ids, params))
    except BaseException:
        for s in streams:
            serving.engine.abort(s.request_id)
        raise
    return streams


# ---------------------------------------------------------------- non-streaming
async def _collect(serving: ServingEngine, streams, n: int) -> list[Choice]:
    choices = [Choice() for _ in range(n * len(streams))]
    async for i, out in merge(streams):
        for d in out.deltas:
            c = choices[i * n + d.index]
            c.text += d.text
            c.num_tokens += len(d.token_ids)
            c.logprobs += _entries(d)
            c.finish_reason = _reason(d)
        if out.finished:
            serving.record(out)
    return choices


def _completion_choice(serving: ServingEngine, index: int, c: Choice, with_logprobs: bool) -> dict[str, Any]:
    return {"index": index, "text": c.text, "finish_reason": c.finish_reason,
            "logprobs": _completion_logprobs(serving, c.logprobs) if with_logprobs else None}


def _completion_logprobs(serving: ServingEngine, entries, offset: int = 0) -> dict[str, Any]:
    """OpenAI's legacy completions shape: parallel lists of tokens, their logprobs, top alternatives."""
    tokens, lps, tops, offsets = [], [], [], []
    for token, top in entries:
        text = serving.token_text(token)
        tokens.append(text)
        lps.append(top.get(token))
        tops.append({serving.token_text(t): lp for t, lp in top.items()})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def _chat_logprobs(serving: ServingEngine, entries) -> dict[str, Any]:
    """Chat's shape: per token its text, logprob, UTF-8 bytes and the top alternatives."""

    def one(token: int, lp: float | None) -> dict[str, Any]:
        text = serving.token_text(token)
        return {"token": text, "logprob": lp, "bytes": list(text.encode())}

    return {"content": [{**one(token, top.get(token)),
                         "top_logprobs": [one(t, lp) for t, lp in top.items() if t != token]}
                        for token, top in entries]}


# ---------------------------------------------------------------- streaming
async def _completion_chunks(serving: ServingEngine, body: CompletionRequest, head, streams,
                             num_prompt: int) -> AsyncIterator[dict[str, Any]]:
    generated = 0
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    async for i, out in merge(streams):
        for d in out.deltas:
            generated += len(d.token_ids)
            if d.text or d.finish_reason or d.logprobs:
                choice = {"index": i * body.n + d.index, "text": d.text, "finish_reason": _reason(d),
                          "logprobs": _completion_logprobs(serving, _entries(d)) if body.logprobs is not None else None}
                yield {**head, "choices": [choice], **({"usage": None} if include_usage else {})}
        if out.finished:
            serving.record(out)
    if include_usage:
        yield {**head, "choices": [], "usage": usage(num_prompt, generated)}


async def _chat_chunks(serving: ServingEngine, body: ChatCompletionRequest, head, streams,
                       num_prompt: int) -> AsyncIterator[dict[str, Any]]:
    generated = 0
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    extra = {"usage": None} if include_usage else {}
    for index in range(body.n):
        yield {**head, "choices": [{"index": index, "delta": {"role": "assistant", "content": ""},
                                    "logprobs": None, "finish_reason": None}], **extra}
    async for _, out in merge(streams):
        for d in out.deltas:
            generated += len(d.token_ids)
            if d.text or d.finish_reason or d.logprobs:
                delta = {"content": d.text} if d.text or not d.finish_reason else {}
                logprobs = _chat_logprobs(serving, _entries(d)) if body.logprobs else None
                yield {**head, "choices": [{"index": d.index, "delta": delta, "logprobs": logprobs,
                                            "finish_reason": _reason(d)}], **extra}
        if out.finished:
            serving.record(out)
    if include_usage:
        yield {**head, "choices": [], "usage": usage(num_prompt, generated)}


def _entries(d: SampleDelta) -> list[tuple[int, dict[int, float]]]:
    return list(zip(d.token_ids, d.logprobs or [], strict=False))


def _reason(d: SampleDelta) -> str | None:
    """The engine's finish reason is already OpenAI's word ("stop", "length", "abort"); "" means none."""
    return d.finish_reason or None
