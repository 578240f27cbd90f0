"""Moved (issue 9): workloads to :mod:`inferlab.bench.workloads`, transformers peers to
:mod:`inferlab.bench.peers`. A temporary re-export while imports move; deleted after."""

from inferlab.bench.peers import hf_generate_per_prompt, hf_generate_static
from inferlab.bench.workloads import (
    NullTokenizer,
    Request,
    RunResult,
    run_engine,
    static_decode_waste,
    synthetic_requests,
)

__all__ = ["NullTokenizer", "Request", "RunResult", "hf_generate_per_prompt", "hf_generate_static", "run_engine",
           "static_decode_waste", "synthetic_requests"]
