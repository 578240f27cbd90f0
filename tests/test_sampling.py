"""The engine's sampler: top-p = 1 filters nothing; the on-device draw follows the filtered distribution,
is reproducible per request and independent of the batch; the CPU path keeps its generators."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from inferlab.sampling import apply_top_k_top_p, sample, sample_on_device, uniform_noise
from inferlab.stats import chi_square_pvalue


def _seq(seed: int, step: int = 0, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    """The parts of an engine Sequence the sampler reads."""
    params = SimpleNamespace(greedy=temperature == 0, temperature=temperature, top_k=top_k, top_p=top_p)
    return SimpleNamespace(params=params, generator=torch.Generator().manual_seed(seed), output_token_ids=[0] * step)


@pytest.mark.parametrize("vocab", [4096, 32000, 151936])
def test_top_p_one_removes_no_token(vocab):
    """Issue 13 item 2: the float32 cumulative sum reaches 1.0 before the tail; top_p = 1 must keep it all."""
    logits = 3 * torch.randn(2, vocab, generator=torch.Generator().manual_seed(vocab))
    out = apply_top_k_top_p(logits, torch.tensor([vocab, vocab]), torch.tensor([1.0, 1.0]))
    assert not torch.isinf(out).any()
    torch.testing.assert_close(out, logits)


def test_top_p_below_one_still_filters():
    logits = torch.tensor([[4.0, 3.0, 0.0, -1.0]])
    out = apply_top_k_top_p(logits, torch.tensor([4]), torch.tensor([0.5]))
    assert torch.isfinite(out).tolist() == [[True, False, False, False]]
    out = apply_top_k_top_p(logits, torch.tensor([2]), torch.tensor([1.0]))
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]


def test_uniform_noise_is_in_the_open_unit_interval_and_keyed():
    u = uniform_noise(torch.tensor([0, 1, 2**32 - 1]), 5000)
    assert u.min() > 0 and u.max() < 1
    assert not torch.equal(u[0], u[1])
    torch.testing.assert_close(uniform_noise(torch.tensor([1]), 5000)[0], u[1])
    assert abs(u.mean().item() - 0.5) < 0.01


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8)])
def test_device_sampler_follows_the_filtered_distribution(temperature, top_k, top_p):
    """Many requests (distinct seeds) drawing from one row of logits: counts fit the warped distribution."""
    vocab, n = 12, 6000
    logits = torch.randn(1, vocab, generator=torch.Generator().manual_seed(1)) * 2
    k = torch.tensor([top_k or vocab])
    probs = apply_top_k_top_p(logits / temperature, k, torch.tensor([top_p])).softmax(-1)[0]
    seqs = [_seq(seed, step=3, temperature=temperature, top_k=top_k, top_p=top_p) for seed in range(n)]
    tokens = sample_on_device(logits.expand(n, vocab), seqs)
    counts = torch.bincount(tokens, minlength=vocab)
    assert counts[probs == 0].sum() == 0  # filtered tokens never appear
    assert chi_square_pvalue(counts, probs) > 1e-4


def test_device_sampler_is_reproducible_and_batch_independent():
    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(2))
    seqs = [_seq(7, step=5), _seq(0, temperature=0.0), _seq(8, step=5), _seq(7, step=6)]
    together = sample_on_device(logits, seqs)
    alone = torch.stack([sample_on_device(logits[i:i + 1], [s])[0] for i, s in enumerate(seqs)])
    assert torch.equal(together, alone)
    assert together[1] == logits[1].argmax()  # greedy rows take the argmax
    draws = {int(sample_on_device(logits[:1], [_seq(7, step=s)])[0]) for s in range(40)}
    assert len(draws) > 5  # a new position draws new noise


def test_cpu_sample_keeps_request_generators():
    """The CPU path draws with each request's own torch.Generator, as before."""
    logits = torch.randn(2, 50, generator=torch.Generator().manual_seed(3))
    tokens, chosen, logprobs = sample(logits, [_seq(11), _seq(0, temperature=0.0)])
    g = torch.Generator().manual_seed(11)
    assert tokens[0] == int(torch.multinomial(logits[0].softmax(-1), 1, generator=g))
    assert tokens[1] == int(logits[1].argmax())
    assert chosen == pytest.approx(logprobs.gather(1, torch.tensor(tokens)[:, None])[:, 0].tolist())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_cuda_sample_matches_the_device_sampler_on_cpu():
    """The CUDA path gives the tokens the same hash-keyed draw gives on CPU tensors (same noise, same rule)."""
    logits = torch.randn(3, 1000, generator=torch.Generator().manual_seed(4))
    seqs = [_seq(1, step=2), _seq(2, step=9, top_k=50), _seq(0, temperature=0.0)]
    tokens, chosen, _ = sample(logits.cuda(), seqs)
    assert tokens == sample_on_device(logits, seqs).tolist()
    assert chosen == pytest.approx(logits.log_softmax(-1).gather(1, torch.tensor(tokens)[:, None])[:, 0].tolist(), abs=1e-5)
