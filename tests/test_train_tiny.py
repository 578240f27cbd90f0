"""The training recipe of the embedded models, exercised on a miniature corpus (fast, CPU)."""

import json
from pathlib import Path

import pytest

from inferlab.tools import train_tiny as tiny

FAKE_STDLIB = {
    "os.py": "import sys\n\ndef getcwd():\n    return '.'\n" * 40,
    "json/__init__.py": "def dumps(obj):\n    return str(obj)\n" * 40,  # held out
    "calendar.py": "def isleap(year):\n    return year % 4 == 0\n" * 40,  # validation
    "collections/__init__.py": "class deque(list):\n    pass\n" * 40,
    "site-packages/foreign.py": "should_not_be_read = True\n",
    "__pycache__/x.py": "nope = 1\n",
}


@pytest.fixture()
def stdlib(tmp_path):
    root = tmp_path / "python3.11"
    for rel, text in FAKE_STDLIB.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_corpus_splits_and_fingerprint(stdlib):
    corpus = tiny.load_corpus(str(stdlib))
    meta = corpus["meta"]
    assert meta["python"] == "3.11"
    assert meta["files"] == 4  # site-packages and __pycache__ excluded
    assert meta["heldout_files"] == 1 and meta["validation_files"] == 1 and meta["train_files"] == 2
    assert corpus["heldout_names"] == [str(Path("json/__init__.py"))]
    assert len(meta["sha256"]) == 64
    assert tiny.load_corpus(str(stdlib))["meta"]["sha256"] == meta["sha256"]
    (stdlib / "os.py").write_text("changed = 1\n")
    assert tiny.load_corpus(str(stdlib))["meta"]["sha256"] != meta["sha256"]


def test_tokenizer_is_byte_level_and_exact(stdlib):
    corpus = tiny.load_corpus(str(stdlib))
    tok = tiny.train_tokenizer(corpus["train"], vocab_size=300)
    text = "def  weird(x):\n\tréturn 'ü' # 🐍\n"
    assert tok.decode(tok.encode(text).ids) == text
    assert tok.token_to_id(tiny.EOS) == 0 and tok.token_to_id(tiny.PAD) == 1


def test_training_end_to_end_writes_loadable_models_and_a_card(stdlib, tmp_path, monkeypatch):
    cfg = tiny.TrainConfig(vocab_size=300, seq_len=32, batch_size=4, target_steps=3, draft_steps=2,
                           eval_every=2, eval_windows=4, onpolicy_sequences=2)
    monkeypatch.setattr(tiny, "TARGET", tiny.ModelShape(32, 64, 2, 4, 2))
    monkeypatch.setattr(tiny, "DRAFT", tiny.ModelShape(16, 32, 1, 2, 1))
    monkeypatch.setattr(tiny, "PROMPTS", tiny.PROMPTS[:1])
    small_acceptance = tiny.generation_acceptance  # shrink the slow-on-CPU measurement
    monkeypatch.setattr(tiny, "generation_acceptance",
                        lambda t, d, s, dev: small_acceptance(t, d, s, dev, prompts=1, context=8, new_tokens=4))
    out = tmp_path / "models"
    report = tiny.train(out, cfg, str(stdlib), log=lambda m: None)

    import inferlab as il

    for name in ("tiny", "tiny-draft"):
        model, tok = il.load_model(str(out / name), device="cpu")
        assert len(tok) == model.config.vocab_size
        assert json.loads((out / name / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert report["models"]["tiny"]["heldout_perplexity"] > 1
    assert 0 <= report["speculative_greedy_acceptance"]["mean_accepted"] <= 4
    assert 0 <= report["speculative_generation_acceptance"]["mean_accepted"] <= 4
    card = (out / "README.md").read_text()
    assert "held-out perplexity" in card and "sha256" in card and "def fibonacci(n):" in card


def test_model_card_reads_every_number_from_the_report():
    """The committed card is what model_card writes from the committed training.json."""
    from inferlab.paths import models_dir
    from inferlab.tools.model_card import model_card

    report = json.loads((models_dir() / "training.json").read_text())
    card = model_card(report)
    assert f"{report['models']['tiny']['parameters']:,}" in card
    assert f"{report['models']['tiny-draft']['heldout_perplexity']:.2f}" in card
    assert "python -m inferlab.tools.train_tiny train" in card
    committed = (models_dir() / "README.md").read_text()
    assert card == committed
