"""Shared test setup: offline, deterministic, CPU."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture()
def one_thread():
    """Tiny matmuls gain nothing from threads and suffer badly on a loaded 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def pair():
    """The embedded speculative pair on the CPU: (target, draft, tokenizer)."""
    import inferlab as il

    target, tok = il.load_model("tiny", device="cpu")
    draft, _ = il.load_model("tiny-draft", device="cpu")
    return target, draft, tok


@pytest.fixture(scope="module")
def decoder(pair):
    """A speculative decoder over the embedded pair, k = 2 (the hardening tests' subject)."""
    from inferlab.speculative import SpeculativeDecoder

    target, draft, tok = pair
    return SpeculativeDecoder(target, draft, tok, num_speculative_tokens=2)
