"""``python -m inferlab.serve``: an OpenAI- and TGI-compatible HTTP server over our engine.

    python -m inferlab.serve --model tiny --port 8000

then, unchanged client code:

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
    client.completions.create(model="tiny", prompt="def add(a, b):", max_tokens=32)

    from huggingface_hub import InferenceClient
    InferenceClient("http://127.0.0.1:8000").text_generation("def add(a, b):", max_new_tokens=32)

- :mod:`~inferlab.serve.app`         the FastAPI app, errors in each API's shape, API key, body limit
- :mod:`~inferlab.serve.openai_api`  ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``
- :mod:`~inferlab.serve.tgi_api`     ``/``, ``/generate``, ``/generate_stream``, ``/info``
- :mod:`~inferlab.serve.protocol`    the pydantic request bodies
- :mod:`~inferlab.serve.metrics`     ``/metrics`` (Prometheus)
- :mod:`~inferlab.serve.cli`         the command line; :mod:`~inferlab.serve.launch` runs it in the background

Continuous batching happens across HTTP clients because one
:class:`~inferlab.engine.async_engine.AsyncLLMEngine` step loop serves them all.
Needs the ``serve`` extra: ``pip install "inferlab[serve]"``.
"""

from __future__ import annotations

__all__ = ["create_app", "main", "ServerProcess", "free_port"]


def __getattr__(name: str):
    if name == "create_app":
        from inferlab.serve.app import create_app

        return create_app
    if name == "main":
        from inferlab.serve.cli import main

        return main
    if name in ("ServerProcess", "free_port"):
        from inferlab.serve import launch

        return getattr(launch, name)
    raise AttributeError(name)
