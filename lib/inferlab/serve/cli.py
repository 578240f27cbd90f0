"""The server's command line: build the engine, start its step loop, serve with uvicorn.

Binds 127.0.0.1 unless told otherwise (a server on 0.0.0.0 is reachable by anyone on
the network), prints the URL and a client snippet once it is listening, and shuts down
gracefully on Ctrl-C / SIGTERM: uvicorn stops accepting and lets open requests finish
for ``--shutdown-timeout`` seconds, then the step loop aborts what is left and stops.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

ENGINE_OPTIONS = {  # flag -> (EngineConfig field, type)
    "--device": ("device", str), "--dtype": ("dtype", str), "--block-size": ("block_size", int),
    "--num-kv-blocks": ("num_kv_blocks", int), "--max-num-seqs": ("max_num_seqs", int),
    "--max-num-batched-tokens": ("max_num_batched_tokens", int), "--attention-backend": ("attention_backend", str),
    "--gpu-memory-utilization": ("gpu_memory_utilization", float),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m inferlab.serve", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny", help="embedded name, local folder or hub id")
    ap.add_argument("--random-weights", metavar="CONFIG", help="serve random weights of a shipped config "
                    "(e.g. llama-3.2-1b) with --model's tokenizer: for load tests")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (401 otherwise)")
    ap.add_argument("--served-model-name", nargs="+", default=None,
                    help="names clients may use in 'model' (default: --model)")
    ap.add_argument("--default-max-tokens", type=int, default=None,
                    help="tokens to generate when a chat request gives no max_tokens (default: the rest of the context)")
    ap.add_argument("--shutdown-timeout", type=float, default=10.0)
    ap.add_argument("--log-level", default="warning")
    for flag, (_, kind) in ENGINE_OPTIONS.items():
        ap.add_argument(flag, type=kind, default=None)
    ap.add_argument("--enable-prefix-caching", action="store_true")
    ap.add_argument("--enforce-eager", action="store_true")
    return ap.parse_args(argv)


def engine_settings(args: argparse.Namespace) -> dict[str, Any]:
    settings = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _) in ENGINE_OPTIONS.items()}
    settings = {k: v for k, v in settings.items() if v is not None}
    if args.enable_prefix_caching:
        settings["enable_prefix_caching"] = True
    if args.enforce_eager:
        settings["enforce_eager"] = True
    return {**settings, "record_trace": False}  # a server runs for days: no per-step trace


def build(args: argparse.Namespace):
    """The engine (real or random weights) and its step loop."""
    from inferlab.engine.async_engine import AsyncLLMEngine
    from inferlab.engine.llm import build_engine

    if args.random_weights:
        from inferlab.configs import load_config
        from inferlab.hub import load_tokenizer, resolve_model_path

        tokenizer = load_tokenizer(resolve_model_path(args.model))
        engine = build_engine(load_config(args.random_weights), tokenizer, **engine_settings(args))
    else:
        engine = build_engine(args.model, **engine_settings(args))
    return AsyncLLMEngine(engine)


def snippet(url: str, model: str, api_key: str | None) -> str:
    return (f"from openai import OpenAI\n"
            f"client = OpenAI(base_url=\"{url}/v1\", api_key={json.dumps(api_key or 'none')})\n"
            f"print(client.completions.create(model=\"{model}\", prompt=\"def add(a, b):\", max_tokens=32)"
            f".choices[0].text)\n")


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from inferlab.serve.app import create_app

    args = parse_args(argv)
    names = args.served_model_name or [args.random_weights or args.model]
    engine = build(args)
    url = f"http://{args.host}:{args.port}"

    def ready() -> None:
        print(f"inferlab.serve: {names[0]} ready at {url} (OpenAI: {url}/v1, TGI: {url})\n"
              f"{snippet(url, names[0], args.api_key)}", flush=True)

    app = create_app(engine, names, args.api_key, on_ready=ready)
    app.state.serving.default_max_tokens = args.default_max_tokens
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                           timeout_graceful_shutdown=args.shutdown_timeout))
    signal.signal(signal.SIGTERM, _stopped)  # uvicorn re-raises the signal after its graceful shutdown
    try:
        server.run()
    except (_Stopped, KeyboardInterrupt):
        pass
    finally:
        engine.shutdown(timeout=args.shutdown_timeout)
        print("inferlab.serve: stopped", flush=True)
    return 0 if server.started else 1


class _Stopped(Exception):
    """SIGTERM arrived (after uvicorn's graceful shutdown, or before it started)."""


def _stopped(signum, frame) -> None:
    raise _Stopped()


if __name__ == "__main__":
    sys.exit(main())
