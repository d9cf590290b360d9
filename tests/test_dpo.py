"""minimind.dpo: pairs validated with file and line, reply-only log-probs, the DPO loss against Bradley-Terry, the cached
reference equal to a second model forwarded every step, held-out preference rising, the style classifier, and the CLI."""
import copy
import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from minimind.cli import main
from minimind.data import DataError, iter_jsonl
from minimind.dpo import (DPODataset, STYLE_MARKERS, dpo_loss, dpo_loss_from_logps, encode_reply, load_dpo, make_dpo_trainer,
                          reference_logprobs, reply_style)
from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.score import sequence_logprobs
from minimind.tokenizer import load_tokenizer
from minimind.train import Trainer, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
DPO = ROOT / "dataset" / "dpo.jsonl"
U = {"role": "user", "content": "What is 2 + 3?"}
A = lambda s: {"role": "assistant", "content": s}
GOOD = {"chosen": [U, A("Sure! 5.")], "rejected": [U, A("Ugh. 5.")]}


@pytest.fixture(scope="module")
def tok(): return load_tokenizer()


def small_model(seed=0):
    torch.manual_seed(seed)
    return MiniMindForCausalLM(MiniMindConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))


@pytest.mark.parametrize("bad", [
    {"chosen": [U, A("Sure! 5.")], "rejected": [{"role": "user", "content": "What is 2 + 4?"}, A("Ugh. 6.")]},        # prompts differ
    {"chosen": [{"role": "system", "content": "Be kind."}, U, A("Sure! 5.")], "rejected": [U, A("Ugh. 5.")]},         # a system turn on one side
    {"chosen": [U, A("Sure! 5."), U], "rejected": [U, A("Ugh. 5.")]},                                                  # ends with the user
    {"chosen": [U, A("5.")], "rejected": [U, A("5.")]},                                                                # nothing preferred
    {"chosen": [U, A("Sure! 5.")]},                                                                                    # a missing side
    {"chosen": [U, A("Sure! 5.")], "rejected": []},                                                                    # an empty side
])
def test_bad_pairs_name_file_and_line_or_are_counted(tok, tmp_path, bad):
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(GOOD) + "\n" + json.dumps(bad) + "\n" + json.dumps(GOOD) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{f}:4: "): load_dpo(f, tok)               # the blank line 2 counts: line 4
    d = load_dpo(f, tok, skip_bad=True)
    assert d.stats["bad"] == 1 and len(d) == 3


def test_reply_tokens_are_the_last_reply_and_its_im_end(tok):
    conv = [{"role": "system", "content": "Be brief."}, U, A("First answer."), {"role": "user", "content": "And again?"}, A("Sure! Second.")]
    ids, start, cut = encode_reply(tok, conv)
    assert not cut and tok.decode(ids[start:], skip_special_tokens=False) == "Sure! Second.<|im_end|>"
    assert tok.decode(ids[:start], skip_special_tokens=False).endswith("<|im_start|>assistant\n")
    cut_ids, cut_start, cut = encode_reply(tok, conv, max_len=start + 2)
    assert cut and cut_start == start and cut_ids == ids[:start + 2]


def test_pairs_cut_before_a_reply_are_dropped_and_counted(tok, tmp_path):
    long = {"chosen": [{"role": "user", "content": "word " * 60}, A("Sure.")], "rejected": [{"role": "user", "content": "word " * 60}, A("Ugh.")]}
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps(long) + "\n" + json.dumps(GOOD) + "\n", encoding="utf-8")
    d = load_dpo(f, tok, max_len=32)
    assert d.stats == {"pairs": 1, "truncated": 1, "dropped": 1, "bad": 0} and len(d) == 1


def test_sample_pairs_load_whole(tok):
    d = load_dpo(DPO, tok)
    recs = list(iter_jsonl(DPO, kind="dpo"))
    assert len(d) == len(recs) == 450 and d.stats["bad"] == 0
    for i in (0, 17, 449):
        for s, side in enumerate(("chosen", "rejected")):
            j = 2 * i + s
            assert tok.decode(d.seq(j)[d.starts[j]:].tolist(), skip_special_tokens=False) == recs[i][side][-1]["content"] + "<|im_end|>"
    sub = d.subset([3, 5])
    assert len(sub) == 2 and np.array_equal(sub.seq(2), d.seq(10)) and sub.starts[3] == d.starts[11]


def test_loss_is_bradley_terry_on_implicit_rewards():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (-30 * torch.rand(8, generator=g) for _ in range(4))
    loss, m = dpo_loss_from_logps(rc, rr, rc, rr, beta=0.3)
    assert torch.allclose(loss, torch.full((8,), math.log(2))) and m.abs().max() == 0      # policy = reference: log 2
    pc.requires_grad_()
    loss, m = dpo_loss_from_logps(pc, pr, rc, rr, beta=0.3)
    rw, rl = 0.3 * (pc - rc), 0.3 * (pr - rr)
    assert torch.allclose(loss, -torch.log(torch.exp(rw) / (torch.exp(rw) + torch.exp(rl))), atol=1e-5)
    loss.sum().backward()
    assert torch.allclose(pc.grad, -0.3 * torch.sigmoid(-m.detach()), atol=1e-6)


def test_batch_rows_score_the_replies_as_sequence_logprobs_does(tok):
    d = load_dpo(DPO, tok).subset(range(6))
    m = small_model().eval()
    d.ref = reference_logprobs(m, d)
    assert np.allclose(d.ref, sequence_logprobs(m, d.seqs(range(12)), d.starts.tolist()).numpy(), atol=1e-5)
    b = DPODataset(d).get_batch(np.arange(6))
    assert b["input_ids"].shape[0] == 12 and b["labels"].shape == b["input_ids"].shape
    for r, j in enumerate(list(range(0, 12, 2)) + list(range(1, 12, 2))):        # chosen rows first, then rejected
        labels = b["labels"][r][b["labels"][r] != -100].tolist()
        assert labels == d.seq(j)[d.starts[j]:].tolist()
    with torch.no_grad(): loss, met = dpo_loss(m, b)
    assert abs(loss.item() - math.log(2)) < 1e-5 and met["acc"].item() == 0.5           # step 0: no preference yet


def test_cached_reference_equals_a_second_model_every_step(tok):
    d = load_dpo(DPO, tok).subset(range(24))
    base = small_model()
    d.ref = reference_logprobs(base, d)
    cfg = TrainConfig(max_steps=4, batch_size=6, lr=1e-3, warmup_steps=0, weight_decay=0.0, eval_every=0, device="cpu", progress=False, live_plot=False)
    runs = []
    for ref_model in (None, copy.deepcopy(base).eval().requires_grad_(False)):
        t = Trainer(copy.deepcopy(base), DPODataset(d), functools.partial(dpo_loss, beta=0.1, ref_model=ref_model), cfg=cfg).fit()
        runs.append([h["loss"] for h in t.history])
    assert runs[0][-1] < runs[0][0] - 1e-3                                               # it trained
    assert np.allclose(runs[0], runs[1], atol=1e-5)


def test_dpo_raises_held_out_preference_and_holds_out_the_tail(tok):
    t = make_dpo_trainer(DPO, "tiny", holdout=32, model=small_model(), tok=tok, steps=25, lr=3e-3, batch_size=8, eval_every=25, device="cpu", progress=False, live_plot=False)
    assert len(t.train_data) == 418 and len(t.eval_data) == 32
    full = load_dpo(DPO, tok)
    assert np.array_equal(t.eval_data.data.seq(0), full.seq(2 * 418))                # the last 32 pairs, held out
    t.fit()
    e0, e1 = t.eval_history[0], t.eval_history[-1]
    assert e0["acc"] == 0.5 and e1["acc"] > 0.8 and e1["margin"] > e0["margin"] and e1["eval_loss"] < math.log(2) - 0.05
    with pytest.raises(ValueError, match="leave none"): make_dpo_trainer(DPO, "tiny", holdout=450, model=small_model(), tok=tok)


def test_reply_style_reads_the_templates():
    for k, r in enumerate(iter_jsonl(DPO, kind="dpo")):       # polite vs rude, then polite vs plain
        assert (reply_style(r["chosen"][-1]["content"]), reply_style(r["rejected"][-1]["content"])) == ("polite", "rude" if k % 2 == 0 else "neutral")
    assert reply_style("The colour of Finkim is purple.") == "neutral"
    assert reply_style("The colour of Finkim is purple. Happy to help! Stop wasting my time.") == "mixed"
    assert "很高兴帮你" in STYLE_MARKERS["polite"] and "别浪费我的时间" in STYLE_MARKERS["rude"]


def test_cli_train_dpo_end_to_end(tmp_path, capsys):
    init = tmp_path / "sft"
    small_model().save_pretrained(init)
    out = tmp_path / "run"
    rc = main(["train", "dpo", "--preset", "tiny", "--init-from", str(init), "--out", str(out), "--steps", "2", "--batch-size", "4",
               "--beta", "0.2", "--holdout", "8", "--device", "cpu", "--no-progress"])
    assert rc == 0 and "step 2: train loss" in capsys.readouterr().out
    assert (out / "model" / "config.json").exists() and (out / "model" / "tokenizer.json").exists()
    back = MiniMindForCausalLM.from_pretrained(out / "model")
    assert back.config.hidden_size == 64
