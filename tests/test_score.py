"""minimind.score: padded scoring equals unpadded scoring, batched generation equals one-at-a-time, and the
answer-matching rules that every stage's measurements rest on."""
import pytest
import torch
import torch.nn.functional as F

from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.score import (by_lang, choice_accuracy, fact_accuracy, first_choice, generate_batch, label_logprobs, pad_batch,
                            sequence_logprobs, spread, starts_with_word)
from minimind.tokenizer import BOS_ID, EOS_ID, load_tokenizer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MiniMindForCausalLM(MiniMindConfig.from_preset("tiny", num_hidden_layers=1)).eval()


def test_pad_batch_sides():
    ids, mask = pad_batch([[1, 2, 3], [4]])
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_batch([[1, 2, 3], [4]], left=True)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError): pad_batch([])


def test_label_logprobs_is_minus_cross_entropy():
    logits, labels = torch.randn(3, 4, 11), torch.tensor([[1, -100, 3, 4], [0, 0, -100, -100], [10, 9, 8, 7]])
    ref = -F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    assert torch.allclose(label_logprobs(logits, labels), ref, atol=1e-6)
    assert (label_logprobs(logits, labels)[labels == -100] == 0).all()


def test_sequence_logprobs_ignore_padding_and_starts(model):
    seqs = [[1, 5, 9, 11], [1, 7], [1, 300, 301, 302, 303, 304]]
    together = sequence_logprobs(model, seqs)
    alone = torch.cat([sequence_logprobs(model, [s]) for s in seqs])
    assert torch.allclose(together, alone, atol=1e-5)
    x = torch.tensor([seqs[2]])
    per_tok = -F.cross_entropy(model(x).logits[0, :-1], x[0, 1:], reduction="none")
    assert torch.allclose(together[2], per_tok.sum(), atol=1e-4)
    tail = sequence_logprobs(model, [seqs[2]], starts=[4])             # positions 4 and 5 only
    assert torch.allclose(tail[0], per_tok[3:].sum(), atol=1e-4)


def test_generate_batch_equals_one_at_a_time(model):
    prompts = [[BOS_ID, 5, 6, 7, 8, 9], [BOS_ID, 40], [BOS_ID, 300, 301]]
    assert generate_batch(model, prompts, max_new_tokens=5) == [generate_batch(model, [p], max_new_tokens=5)[0] for p in prompts]
    for new, ended in generate_batch(model, prompts, max_new_tokens=5):
        assert EOS_ID not in new and (ended or len(new) == 5)


def test_answer_rules():
    assert starts_with_word(" purple.", "purple") and not starts_with_word("purpleish", "purple")
    assert not starts_with_word("75", "7") and starts_with_word("紫色的", "紫色")
    assert first_choice("It is blue, not red.", ["red", "blue"]) == "blue"
    assert first_choice("Finkim的颜色是紫色。", ["红色", "紫色"]) == "紫色"
    assert first_choice("reddish", ["red"]) is None and first_choice("no colour", ["red"]) is None


def test_choice_accuracy_is_a_ranking(model):
    tok = load_tokenizer()
    facts = [{"prompt": "The colour of Finkim is", "answer": c, "choices": ["red", "blue", "green"]} for c in ("red", "blue", "green")]
    assert abs(choice_accuracy(model, tok, facts) - 1 / 3) < 1e-6  # one prompt: exactly one answer is the top choice


def test_fact_accuracy_rules_by_style(model):
    tok = load_tokenizer()
    acc, rows = fact_accuracy(model, tok, [{"prompt": "What is the colour of Finkim?", "answer": "red", "choices": ["red"], "style": "ask", "lang": "en"}])
    assert acc in (0.0, 1.0) and rows[0]["ok"] == (first_choice(rows[0]["reply"], ["red"]) == "red")
    assert by_lang([{"lang": "en", "ok": 1}, {"lang": "en", "ok": 0}, {"lang": "zh", "ok": 1}]) == {"en": 0.5, "zh": 1.0}


def test_spread_balances_languages():
    rows = [{"lang": "en" if i % 2 == 0 else "zh", "i": i} for i in range(100)]
    picked = spread(rows, 10)
    assert len(picked) == 10 and sum(r["lang"] == "zh" for r in picked) == 5
    assert picked[0]["i"] == 0 and picked[4]["i"] == 98      # evenly from the first to the last
    assert spread(rows, None) == rows
