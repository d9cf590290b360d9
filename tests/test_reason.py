"""minimind.reason: the template's parser, the calculator teacher against the sample, the tag-weighted loss against
plain and slow references, GRPO's advantages, loss and KL against hand formulas, the rollouts as Trainer data, and
`minimind train reason|grpo` end to end on a tiny model."""
import json, math, os, subprocess, sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minimind.data import iter_jsonl
from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.reason import (REASON_PRESETS, TAG_IDS, GRPORollouts, arith_probes, ask, column_steps, column_teacher, eval_expressions,
                             final_number, fresh_expressions, group_advantages, grpo_loss, heldout_expressions, kl_k3, load_chats, load_problems,
                             make_grpo_trainer, make_reason_trainer, model_at, parse_reasoning, pick_start, question_expr, reasoning_reward, score_reply, solve_steps,
                             stage_heldout, weighted_lm_loss, worked_chat)
from minimind.score import label_logprobs
from minimind.sft import SFTDataset, load_sft
from minimind.tokenizer import THINK_TOKENS, load_tokenizer
from minimind.train import causal_lm_loss

ROOT = Path(__file__).resolve().parents[1]
REASON, ARITH = ROOT / "dataset" / "reason.jsonl", ROOT / "dataset" / "arith_eval.jsonl"


@pytest.fixture(scope="module")
def tok(): return load_tokenizer()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return MiniMindForCausalLM(MiniMindConfig.from_preset("tiny", num_hidden_layers=2)).eval()


def test_tags_are_single_tokens_and_every_training_reply_parses(tok):
    assert [tok.token_to_id(t) for t in THINK_TOKENS] == list(TAG_IDS) == [3, 4, 5, 6]
    replies = [r["conversations"][-1]["content"] for r in iter_jsonl(REASON, kind="reason")]
    assert len(replies) == 350 and all(parse_reasoning(t) for t in replies)
    ids = tok.encode(replies[0], add_special_tokens=False).ids
    assert [i for i in ids if i in TAG_IDS] == list(TAG_IDS) and tok.decode(ids) == replies[0]


@pytest.mark.parametrize("text,fmt,exact", [
    ("<think>\na\n</think>\n<answer>\n1 + 2 = 3\n</answer>", True, True),
    ("  <think>a</think><answer>3</answer>\n", True, True),
    ("<think>\na\n</think>\n<answer>\n1 + 2 = 4\n</answer>", True, False),
    ("<think>\na\n<answer>\n3\n</answer>", False, True),                                  # no </think>: MiniMind's symptom
    ("<think>a</think><think>b</think><answer>3</answer>", False, True),
    ("<answer>3</answer><think>a</think>", False, True),
    ("<think>a</think><answer>3</answer> and 4", False, False),
    ("The answer is 3.", False, True),
    ("no number", False, False)])
def test_score_reply(text, fmt, exact):
    assert score_reply(text, 3) == {"format": fmt, "exact": exact, "strict": fmt and exact}
    assert reasoning_reward(text, {"answer": "3"}, format_weight=0.1)[0] == pytest.approx((fmt and exact) + 0.1 * fmt)


def test_calculator_rewrites_the_sample_and_solves_the_held_out_set():
    n = 0
    for rec in iter_jsonl(REASON, kind="reason"):
        if q := question_expr(rec["conversations"][0]["content"]): assert worked_chat(*q) == rec; n += 1
    assert n == 150
    rows = list(iter_jsonl(ARITH, kind="eval"))
    assert [str(solve_steps(r["expression"])[1]) for r in rows] == [r["answer"] for r in rows]
    assert solve_steps("(3 + 4) × (5 - 2) + 1") == (["3 + 4 = 7", "5 - 2 = 3", "7 × 3 = 21", "21 + 1 = 22"], 22)
    assert solve_steps("10 - 2 - 3") == (["10 - 2 = 8", "8 - 3 = 5"], 5)                    # left to right
    assert final_number("12 + 3 = 15") == 15 and final_number("none") is None


def test_fresh_problems_avoid_the_held_out_set_and_repeat_with_the_seed():
    held = {r["expression"] for r in iter_jsonl(ARITH, kind="eval")}
    a, b = fresh_expressions(2000, seed=3, exclude=held), fresh_expressions(2000, seed=3, exclude=held)
    assert a == b and len(set(a)) == 2000 and not set(a) & held
    assert fresh_expressions(50, seed=4) != a[:50]
    probes = arith_probes(eval_expressions(ARITH)[:5])
    assert [p["lang"] for p in probes] == ["en"] * 5 + ["zh"] * 5 and probes[5]["prompt"].endswith("等于多少？")


def test_load_problems_from_each_kind_of_file(tmp_path):
    from_reason = load_problems(REASON)
    assert len(from_reason) == 150 and all(p["answer"] == str(solve_steps(p["expression"])[1]) for p in from_reason)
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"expression": "2 + 3 × 4"}) + "\n" + json.dumps({"prompt": "Two plus two?", "answer": "4"}) + "\n", encoding="utf-8")
    assert load_problems(f) == [ask("2 + 3 × 4"), {"prompt": "Two plus two?", "answer": "4"}]


def test_mixed_and_in_memory_chats_equal_the_file(tok):
    a = load_sft(REASON, tok, 129, kind="reason")
    recs = list(iter_jsonl(REASON, kind="reason"))
    b = load_chats(recs, tok, 129)
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.trained, b.trained)
    c = a + b
    assert len(c) == 2 * len(a) and np.array_equal(c.example(len(a) + 7)[0], a.example(7)[0])


def test_weighted_loss_plain_at_one_and_slow_reference_at_ten(tok, tiny):
    batch = SFTDataset(load_sft(REASON, tok, 129, kind="reason"), 128).get_batch(np.arange(3))
    with torch.no_grad():
        assert torch.allclose(weighted_lm_loss(tiny, batch)[0], causal_lm_loss(tiny, batch)[0], atol=1e-6)
        loss, m = weighted_lm_loss(tiny, batch, tag_weight=10.0)
        logits = tiny(batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]).logits.double()
    num = den = 0.0
    for b, t in zip(*torch.nonzero(batch["labels"] != -100, as_tuple=True)):
        y = int(batch["labels"][b, t]); w = 10.0 if y in TAG_IDS else 1.0
        num += w * -torch.log_softmax(logits[b, t], -1)[y]; den += w
    assert abs(float(loss) - float(num / den)) < 1e-5
    assert abs(float(m["ce"]) - float(causal_lm_loss(tiny, batch)[1]["ce"])) < 1e-5


def test_group_advantages():
    R = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [3.0, 1.0, 2.0, 2.0]])
    A = group_advantages(R)
    assert torch.isfinite(A).all() and torch.equal(A[1], torch.zeros(4))
    assert torch.allclose(A.mean(-1), torch.zeros(3), atol=1e-6)
    assert torch.allclose(A[[0, 2]].std(-1, unbiased=False), torch.ones(2), atol=1e-3)
    assert torch.allclose(group_advantages(R, scale=False), R - R.mean(-1, keepdim=True))


def test_grpo_loss_against_a_slow_reference_with_clipping():
    torch.manual_seed(1)
    B, T, V = 5, 6, 11
    labels = torch.randint(0, V, (B, T)); labels[0, 4:] = -100; labels[3, :2] = -100
    z = torch.randn(B, T, V)
    logp = label_logprobs(z, labels)
    old = (logp + 0.4 * torch.randn(B, T)) * (labels != -100)                              # some ratios far outside 1 ± 0.2
    ref = (logp + 0.3 * torch.randn(B, T)) * (labels != -100)
    adv = torch.randn(B)
    batch = {"input_ids": labels.clamp(min=0), "labels": labels, "old_logprobs": old, "ref_logprobs": ref, "advantages": adv}
    loss, m = grpo_loss(lambda ids: SimpleNamespace(logits=z), batch, clip_eps=0.2, beta=0.05)
    total, n, clipped = 0.0, 0, 0
    for i in range(B):
        for t in range(T):
            if labels[i, t] == -100: continue
            lp, o, r = float(logp[i, t]), float(old[i, t]), float(ref[i, t])
            ratio = math.exp(lp - o); a = float(adv[i])
            total += -min(ratio * a, min(max(ratio, 0.8), 1.2) * a) + 0.05 * (math.exp(r - lp) - (r - lp) - 1); n += 1
            clipped += abs(ratio - 1) > 0.2
    assert abs(float(loss) - total / n) < 1e-5 and 0 < clipped < n
    assert abs(float(m["clip_frac"]) - clipped / n) < 1e-6


def test_grpo_gradient_at_ratio_one_is_the_policy_gradient():
    torch.manual_seed(2)
    labels = torch.randint(0, 9, (4, 5)); labels[1, 3:] = -100
    z = torch.randn(4, 5, 9, requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 0.5, 0.0])
    batch = {"input_ids": labels.clamp(min=0), "labels": labels, "old_logprobs": label_logprobs(z, labels).detach(), "advantages": adv}
    g, = torch.autograd.grad(grpo_loss(lambda ids: SimpleNamespace(logits=z), batch, beta=0.0)[0], z)
    mask = labels != -100
    want, = torch.autograd.grad(-(label_logprobs(z, labels) * adv[:, None] * mask).sum() / mask.sum(), z)
    assert torch.allclose(g, want, atol=1e-7)


def test_k3_is_an_unbiased_nonnegative_kl_estimate():
    torch.manual_seed(3)
    p, q = torch.softmax(torch.randn(7), 0), torch.softmax(torch.randn(7), 0)
    k3 = kl_k3(p.log(), q.log())
    assert (k3 >= 0).all() and torch.allclose((p * k3).sum(), (p * (p / q).log()).sum(), atol=1e-6)


def test_rollouts_are_a_trainer_batch(tok, tiny):
    probs = [ask(e, l) for e, l in zip(fresh_expressions(6, seed=5), ["en", "zh"] * 3)]
    ro = GRPORollouts(tiny, tok, probs, group_size=3, max_new_tokens=12, ref=tiny, seed=7)
    b = ro.get_batch([4, 1])
    assert b["input_ids"].shape[0] == 6 and b["labels"].shape == b["old_logprobs"].shape == b["ref_logprobs"].shape
    for k in range(6):                                                                   # labels: exactly the answer tokens, after the prompt
        prompt = ro.prompts[[4, 1][k // 3]]
        lab = b["labels"][k].tolist()
        assert all(x == -100 for x in lab[:len(prompt) - 1]) and b["input_ids"][k, :len(prompt)].tolist() == prompt
        answer = [x for x in lab if x != -100]
        assert 1 <= len(answer) <= 13
        text = tok.decode([x for x in answer if x != 2])
        assert b["rewards"][k].item() == pytest.approx(reasoning_reward(text, probs[[4, 1][k // 3]])[0])
    with torch.no_grad(): lp = label_logprobs(tiny(b["input_ids"]).logits, b["labels"])
    assert torch.allclose(lp, b["old_logprobs"], atol=1e-5) and torch.allclose(b["ref_logprobs"], b["old_logprobs"])
    assert torch.allclose(b["advantages"], group_advantages(b["rewards"].view(2, 3)).flatten())
    again = GRPORollouts(tiny, tok, probs, group_size=3, max_new_tokens=12, seed=7).get_batch([4, 1])
    assert torch.equal(again["input_ids"], b["input_ids"])                              # the seeded generator repeats
    assert len(ro.log) == 1 and set(ro.log[0]) == {"reward", "exact", "format", "length", "flat_groups"}


def test_grpo_trainer_learns_only_from_differences(tok, tiny, tmp_path):
    "Held-out problems stay out; when every answer scores the same (a random model is always wrong) nothing moves; a varying reward moves the weights."
    t = make_grpo_trainer(REASON, "tiny", eval_path=ARITH, model=tiny, tok=tok, run_dir=tmp_path, steps=2, device="cpu", progress=False, live_plot=False)
    held = {r["expression"] for r in iter_jsonl(ARITH, kind="eval")}
    assert not {p["expression"] for p in t.train_data.problems} & held and len(t.train_data) == 150 + 500
    before = [p.detach().clone() for p in t.model.parameters()]
    t.fit()
    assert t.step == 2 and len(t.train_data.log) == 2 and all(x["flat_groups"] == 1.0 for x in t.train_data.log)
    assert all(torch.equal(a, b) for a, b in zip(before, t.model.parameters()))          # zero advantages, policy = reference: no gradient
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000002.pt"]
    odd = lambda text, p: (float(len(text) % 2), score_reply(text, p["answer"]))
    t = make_grpo_trainer(REASON, "tiny", eval_path=ARITH, model=tiny, tok=tok, reward_fn=odd, steps=1, device="cpu", progress=False, live_plot=False)
    t.fit()
    assert any(not torch.equal(a, b) for a, b in zip(before, t.model.parameters()))


def test_cli_reason_then_grpo(tmp_path):
    "`minimind train reason` then `minimind train grpo` on its model: the same code path as the notebook, measured on held-out problems."
    base = tmp_path / "sft"
    torch.manual_seed(0); MiniMindForCausalLM(MiniMindConfig.from_preset("tiny", num_hidden_layers=2)).save_pretrained(base)
    held = tmp_path / "held.jsonl"                                                          # four sums: the tiny preset's task is column addition
    held.write_text("".join(json.dumps(ask(e)) + "\n" for e in ["47 + 85", "12 + 30", "99 + 99", "5 + 61"]), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "minimind.cli", "train"]
    common = ["--preset", "tiny", "--steps", "2", "--eval-data", str(held), "--device", "cpu", "--no-progress"]
    r = subprocess.run(cli + ["reason", "--init-from", str(base), "--out", str(tmp_path / "reason"), "--fresh", "20", "--tag-weight", "10"] + common,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "reason: held-out arithmetic (8 problems)" in r.stdout and "step 2: train loss" in r.stdout and "held-out" in r.stdout.splitlines()[-1]
    assert r.stdout.splitlines()[-2].startswith("reason: GRPO's start: step 2, validation exact match")   # the only checkpoint of 2 steps
    rows = json.loads((tmp_path / "reason" / "outcome.json").read_text())["rows"]
    assert [x["metric"] for x in rows] == ["held-out arithmetic: format compliance", "held-out arithmetic: exact match"]
    curve = json.loads((tmp_path / "reason" / "validation_curve.json").read_text())
    assert curve["start"]["step"] == 2 and [c["step"] for c in curve["curve"]] == [2]
    r = subprocess.run(cli + ["grpo", "--init-from", str(tmp_path / "reason" / "start_model"), "--out", str(tmp_path / "grpo"), "--fresh", "10", "--group-size", "2",
                              "--data", str(REASON)] + common, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    last = r.stdout.splitlines()[-1]
    assert last.startswith("step 2: train loss") and "held-out" not in last and (tmp_path / "grpo" / "model" / "config.json").exists()


def test_validation_problems_stand_apart_and_grpo_starts_at_the_checkpoint_nearest_its_target(tok, tiny, tmp_path):
    "Validation problems are neither held out nor trained on; `pick_start` takes the checkpoint nearest the target; `model_at` loads that step's weights."
    t = make_reason_trainer(None, "tiny", model=tiny, tok=tok, fresh=64, run_dir=tmp_path, steps=4, ckpt_every=2, device="cpu", progress=False, live_plot=False)
    val, held = {p["expression"] for p in t.val_probes}, {p["expression"] for p in t.probes}
    assert len(val) == REASON_PRESETS["tiny"]["val"] and len(t.val_probes) == 2 * len(val) and t.start_at == REASON_PRESETS["tiny"]["start_at"]
    assert not val & held and not val & set(fresh_expressions(64, 42, held, "columns"))
    curve = [{"step": 2, "exact": 0.2}, {"step": 4, "exact": 0.4}, {"step": 6, "exact": 0.6}, {"step": 8, "exact": 0.9}]
    assert pick_start(curve)["step"] == 4 and pick_start(curve, 0.65)["step"] == 6 and pick_start(curve, 1.0)["step"] == 8   # 0.5: 4 and 6 tie, the earlier wins
    t.fit()
    same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert same(model_at(t, 4), t.model) and not same(model_at(t, 2), t.model)
    with pytest.raises(ValueError, match=r"no checkpoint of step 3 .* \(kept: \[2, 4\]\)"): model_at(t, 3)


def test_column_addition_teacher():
    "The column method agrees with the calculator on every two-digit sum; its replies parse; each digit is one token."
    assert column_steps("47 + 85") == (["7+5+0=12", "4+8+1=13"], 132)
    assert column_steps("5 + 98") == (["5+8+0=13", "0+9+1=10"], 103) and column_steps("999 + 1")[1] == 1000
    assert all(column_steps(f"{a} + {b}")[1] == a + b for a in range(10, 100) for b in range(10, 100))
    with pytest.raises(ValueError, match="a \\+ b"): column_steps("8 × 8")
    chat = worked_chat("47 + 85", "zh", column_teacher)["conversations"]
    assert chat[0]["content"] == "47 + 85 等于多少？" and parse_reasoning(chat[1]["content"]) == ("7+5+0=12\n4+8+1=13", "132")
    assert score_reply(chat[1]["content"], ask("47 + 85")["answer"])["strict"]


def test_column_problems_hold_out_their_own_set():
    held = heldout_expressions("columns", 100)
    assert held == stage_heldout(REASON_PRESETS["course"]) and len(set(held)) == 100
    assert stage_heldout(REASON_PRESETS["course"], n=10) == held[:10] and stage_heldout(REASON_PRESETS["course"], ARITH) == eval_expressions(ARITH)
    train = fresh_expressions(5040, seed=42, exclude=held, task="columns")
    assert len(set(train)) == 5040 and not set(train) & set(held) and all(column_steps(e) for e in train[:50])
    with pytest.raises(ValueError, match="only 8000 distinct 'columns' problems"):      # 8100 sums, 100 held out
        fresh_expressions(8001, seed=0, exclude=held, task="columns")


def test_reason_trainer_on_generated_sums(tok, tiny):
    "Without a data file the preset's task is all the data: one worked sum per row, no packing; the held-out probes are its own set in both languages."
    t = make_reason_trainer(None, "tiny", model=tiny, tok=tok, fresh=64, device="cpu", progress=False, live_plot=False)
    assert len(t.train_data) == 64 and not t.train_data.pack and len(t.eval_data.data) == 2 * REASON_PRESETS["tiny"]["heldout"]
    assert [p["expression"] for p in t.probes] == 2 * heldout_expressions("columns", REASON_PRESETS["tiny"]["heldout"])
    b = t.train_data.get_batch(np.arange(4))
    assert b["input_ids"].shape == (4, REASON_PRESETS["tiny"]["seq_len"]) and "attention_mask" not in b
    with pytest.raises(ValueError, match="nothing to train on"): make_reason_trainer(None, "tiny", model=tiny, tok=tok, fresh=0)
