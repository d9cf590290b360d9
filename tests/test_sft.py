"""minimind.sft: the loss mask against the template position by position, truncation, bad input, packing whose
conversations never see each other, and the packed loss equal to the conversations' losses alone."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minimind.data import DataError
from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.sft import SFTData, SFTDataset, chat_spans, encode_sft, load_sft, pack_rows, useful_shares
from minimind.tokenizer import EOS_ID, apply_chat_template, encode_chat, load_tokenizer
from minimind.train import causal_lm_loss

CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]


@pytest.fixture(scope="module")
def tok(): return load_tokenizer()


def enc(tok, s): return tok.encode(s, add_special_tokens=False).ids


def test_mask_is_exactly_the_replies_and_their_im_end(tok):
    text, spans = chat_spans(CONV)
    assert text == apply_chat_template(CONV)
    assert [text[a:b] for a, b in spans] == ["Hello!<|im_end|>", "你好！<|im_end|>"]
    ids, trained, cut = encode_sft(tok, CONV)
    assert ids == encode_chat(tok, CONV) and not cut
    S, E, NL = [1], [EOS_ID], enc(tok, "\n")
    head = lambda role: S + enc(tok, role) + NL
    pieces = [(head("system") + enc(tok, "Be brief.") + E + NL, False), (head("user") + enc(tok, "Hi") + E + NL, False),
              (head("assistant"), False), (enc(tok, "Hello!") + E, True), (NL, False),
              (head("user") + enc(tok, "你好") + E + NL, False), (head("assistant"), False), (enc(tok, "你好！") + E, True), (NL, False)]
    assert ids == [t for p, _ in pieces for t in p]
    assert trained == [f for p, f in pieces for _ in p]


def test_truncation_inside_a_reply(tok):
    ids, trained, _ = encode_sft(tok, CONV)
    first_reply = trained.index(True)
    cut_ids, cut_trained, cut = encode_sft(tok, CONV, max_len=first_reply + 2)
    assert cut and cut_ids == ids[:first_reply + 2] and cut_trained == trained[:first_reply + 2]
    assert sum(cut_trained) == 2 and EOS_ID not in cut_ids[first_reply:]


def test_bad_lines_name_file_and_line_or_are_counted(tok, tmp_path):
    good = json.dumps({"conversations": CONV[1:3]})
    for bad in ({"conversations": [{"role": "user", "content": "x"}]},                       # no assistant turn
                {"conversations": [{"role": "user", "content": "x"}, {"role": "robot", "content": "y"}]},
                {"conversations": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]},
                {"conversations": "not a list"}, {"text": "wrong schema"}):
        f = tmp_path / "bad.jsonl"
        f.write_text(good + "\n" + good + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
        with pytest.raises(DataError, match=rf"^{f}:3: "): load_sft(f, tok)
        d = load_sft(f, tok, skip_bad=True)
        assert d.stats["bad"] == 1 and len(d) == 2


def test_overlong_conversations_are_cut_or_dropped_and_counted(tok, tmp_path):
    long_prompt = {"conversations": [{"role": "user", "content": "word " * 80}, {"role": "assistant", "content": "ok"}]}
    long_reply = {"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "word " * 80}]}
    f = tmp_path / "long.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in (long_prompt, long_reply, {"conversations": CONV[1:3]})) + "\n", encoding="utf-8")
    d = load_sft(f, tok, max_len=32)
    assert d.stats == {"conversations": 3, "truncated": 2, "dropped": 1, "bad": 0} and len(d) == 2
    assert d.lengths().max() == 32


def test_pack_rows_fits_everything_once():
    rng = np.random.default_rng(0)
    lens = rng.integers(1, 100, 500)
    rows = pack_rows(lens, 128)
    assert sorted(i for r in rows for i in r) == list(range(500))
    assert all(lens[r].sum() <= 128 for r in rows)
    assert len(rows) <= int(np.ceil(lens.sum() / 128 * 1.05)) + 1        # best-fit decreasing: within a few % of the bound
    with pytest.raises(ValueError): pack_rows([5, 200], 128)


def make_data(tok, convs):
    encs = [encode_sft(tok, c) for c in convs]
    return SFTData(np.concatenate([np.asarray(i, np.uint16) for i, _, _ in encs]), np.concatenate([np.asarray(t, bool) for _, t, _ in encs]),
                   np.concatenate([[0], np.cumsum([len(i) for i, _, _ in encs])]).astype(np.int64), {})


def test_packed_conversations_never_see_each_other(tok):
    convs = [CONV, CONV[1:3], [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}], CONV[3:]]
    data = make_data(tok, convs)
    ds = SFTDataset(data, seq_len=int(data.lengths().sum()) + 3)         # everything in one row, with padding after
    assert len(ds) == 1
    b = ds.get_batch([0])
    torch.manual_seed(0)
    m = MiniMindForCausalLM(MiniMindConfig.from_preset("tiny", num_hidden_layers=2)).eval()
    with torch.no_grad():
        row = m(b["input_ids"], attention_mask=b["attention_mask"], position_ids=b["position_ids"]).logits[0]
        o = 0
        for e in ds.rows[0]:
            t, tr = data.example(e)
            alone = m(torch.as_tensor(t.astype(np.int64))[None]).logits[0]
            assert torch.allclose(row[o:o + len(t)], alone, atol=1e-4)
            lab = b["labels"][0, o:o + len(t) - 1]                          # labels inside the conversation: its trained tokens
            assert torch.equal(lab, torch.where(torch.as_tensor(tr[1:]), torch.as_tensor(t[1:].astype(np.int64)), -100))
            o += len(t)
    assert (b["labels"][0, o - 1:] == -100).all()                           # across the boundary and in the padding: nothing


def test_packed_loss_is_the_token_weighted_mean_of_each_conversation(tok):
    convs = [CONV, CONV[1:3], CONV[3:]]
    data = make_data(tok, convs)
    torch.manual_seed(1)
    m = MiniMindForCausalLM(MiniMindConfig.from_preset("tiny", num_hidden_layers=1)).eval()
    packed = SFTDataset(data, 64)
    padded = SFTDataset(data, 64, pack=False)
    assert "attention_mask" not in padded.get_batch([0]) and len(padded) == 3
    with torch.no_grad():
        lp, _ = causal_lm_loss(m, packed.get_batch(np.arange(len(packed))))
        lq, _ = causal_lm_loss(m, padded.get_batch(np.arange(3)))
    assert abs(lp.item() - lq.item()) < 1e-4
    assert packed.useful_share() > padded.useful_share()


def test_useful_shares():
    s = useful_shares([65] * 8, 64)                                          # each fills a row exactly: packing gains nothing
    assert s["packed"] == pytest.approx(1.0) and s["padded"] == pytest.approx(1.0)
    s = useful_shares([32] * 8, 64)                                          # two per row when packed
    assert s["padded"] == pytest.approx(31 / 64) and s["packed"] == pytest.approx(31 * 8 / (4 * 64))


def test_one_constructor_mixes_and_selects_conversations(tok, tmp_path):
    "SFTData.from_examples is load_sft's constructor too; + and select keep each conversation's tokens and mask, and add the counts."
    p = tmp_path / "c.jsonl"
    p.write_text("\n".join(json.dumps({"conversations": CONV[1:3 + 2 * (i % 2)]}, ensure_ascii=False) for i in range(5)), encoding="utf-8")
    data = load_sft(p, tok)
    examples = [encode_sft(tok, CONV[1:3 + 2 * (i % 2)], 512)[:2] for i in range(5)]
    built = SFTData.from_examples(examples)
    assert np.array_equal(built.tokens, data.tokens) and np.array_equal(built.trained, data.trained) and np.array_equal(built.offsets, data.offsets)
    mixed = data.select([4, 0]) + data
    assert len(mixed) == 7 and mixed.stats["conversations"] == 2 + 5
    for i, j in enumerate([4, 0, 0, 1, 2, 3, 4]):
        assert [x.tolist() for x in mixed.example(i)] == [x.tolist() for x in data.example(j)]
    with pytest.raises(ValueError, match="no conversations"): SFTData.from_examples([])
