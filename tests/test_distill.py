"""minimind.distill: the temperature-scaled KL against torch's kl_div and its T² gradient, the loss on reply tokens only,
students copied from the teacher's layers, the KD student pulled towards the teacher faster than CE alone, and the CLI."""
import copy
import functools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minimind.cli import main
from minimind.distill import copy_layers, kd_kl, kd_loss, make_distill_trainer, make_student
from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.sft import SFTDataset, load_sft
from minimind.tokenizer import load_tokenizer
from minimind.train import Trainer, TrainConfig, causal_lm_loss

ROOT = Path(__file__).resolve().parents[1]
SFT, SFT_EVAL = ROOT / "dataset" / "sft.jsonl", ROOT / "dataset" / "sft_eval.jsonl"


def model(layers=4, hidden=64, seed=0):
    torch.manual_seed(seed)
    return MiniMindForCausalLM(MiniMindConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2))


@pytest.fixture(scope="module")
def rows():
    "Packed held-out conversations: rows with reply-only labels, a block-diagonal mask and restarting positions."
    return SFTDataset(load_sft(SFT_EVAL, load_tokenizer(), 129), 128)


@pytest.mark.parametrize("T", [0.5, 1.0, 2.0, 4.0])
def test_kl_matches_torch_kl_div(T):
    g = torch.Generator().manual_seed(1)
    v, z = torch.randn(16, 6400, generator=g), 4 * torch.randn(16, 6400, generator=g)
    want = T * T * F.kl_div(F.log_softmax(v / T, -1), F.log_softmax(z / T, -1), log_target=True, reduction="batchmean")
    assert torch.allclose(kd_kl(v, z, T), want, rtol=1e-5, atol=1e-5)
    assert kd_kl(z, z, T).abs() < 1e-5                                                   # a model distilled into itself


def test_t_squared_keeps_the_gradient_scale():
    g = torch.Generator().manual_seed(2)
    v, z = 0.1 * torch.randn(32, 64, generator=g), 0.1 * torch.randn(32, 64, generator=g)
    norms = []
    for T in (2.0, 4.0, 8.0):
        vv = v.clone().requires_grad_(); kd_kl(vv, z, T).backward()
        assert torch.allclose(vv.grad, T * (torch.softmax(v / T, -1) - torch.softmax(z / T, -1)) / len(v), atol=1e-7)   # T² · (q - p) / (N T)
        norms.append(vv.grad.norm().item())
    assert max(norms) / min(norms) < 1.1                                                 # without T² they would fall 16x from T=2 to T=8


def test_loss_counts_reply_tokens_only(rows):
    s, t = model(2), model(4, seed=1)
    b = rows.get_batch(np.arange(3))
    with torch.no_grad():
        assert torch.allclose(kd_loss(s, b, None, alpha=1.0)[0], causal_lm_loss(s, b)[0], atol=1e-6)    # alpha = 1: SFT's loss
        _, m = kd_loss(s, b, t, T=2.0, alpha=0.3)
        kw = dict(attention_mask=b["attention_mask"], position_ids=b["position_ids"])
        keep = b["labels"] != -100
        want = kd_kl(s(b["input_ids"], **kw).logits[keep], t(b["input_ids"], **kw).logits[keep], 2.0)
        assert torch.allclose(m["kl"], want, atol=1e-6)
        loss, _ = kd_loss(s, b, t, T=2.0, alpha=0.3)
        assert torch.allclose(loss, 0.3 * m["ce"] + 0.7 * m["kl"], atol=1e-6)
        assert 0 < keep.sum() < (b["attention_mask"][:, 0].diagonal(dim1=-2, dim2=-1)).sum()   # fewer positions than real tokens


def test_students_copied_from_the_teacher(tmp_path):
    t = model(4)
    s = make_student(t, "half")
    assert s.config.num_hidden_layers == 2 and s.num_params() < t.num_params()
    for i, j in enumerate((0, 2)):
        for a, b in zip(s.model.layers[i].parameters(), t.model.layers[j].parameters()): assert torch.equal(a, b)
    assert torch.equal(s.model.norm.weight, t.model.norm.weight) and s.lm_head.weight is s.model.embed_tokens.weight
    assert copy_layers(t, [3]).config.num_hidden_layers == 1
    x = torch.randint(0, 6400, (1, 12))
    with torch.no_grad(): assert torch.allclose(copy_layers(t, range(4))(x).logits, t(x).logits, atol=1e-6)   # all layers: the teacher itself
    with pytest.raises(ValueError, match="not layers"): copy_layers(t, [4])
    assert make_student(t, "tiny").config.hidden_size == 128                            # a preset name: fresh, that size
    MiniMindForCausalLM(MiniMindConfig(vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="vocabulary"): make_student(t, tmp_path / "other")   # a folder on another vocabulary


def test_kd_pulls_the_student_to_the_teacher_faster_than_ce(rows):
    teacher, student = model(4, seed=3), None
    student = make_student(teacher, "half")
    with torch.no_grad():                                                                # a teacher with a distribution of its own
        for p in teacher.parameters(): p.add_(0.05 * torch.randn_like(p))
    teacher.requires_grad_(False).eval()
    cfg = TrainConfig(max_steps=15, batch_size=4, lr=3e-3, warmup_steps=0, eval_every=0, device="cpu", progress=False, live_plot=False)
    kl = {}
    for name, fn in (("ce", functools.partial(kd_loss, teacher=None, alpha=1.0)), ("kd", functools.partial(kd_loss, teacher=teacher, T=2.0, alpha=0.0))):
        t = Trainer(copy.deepcopy(student), rows, fn, cfg=cfg).fit()
        with torch.no_grad(): kl[name] = kd_loss(t.model, rows.get_batch(np.arange(len(rows))), teacher, T=2.0)[1]["kl"].item()
    with torch.no_grad(): kl0 = kd_loss(student, rows.get_batch(np.arange(len(rows))), teacher, T=2.0)[1]["kl"].item()
    assert kl["kd"] < kl0 and kl["kd"] < kl["ce"]


def test_make_distill_trainer_and_cli(tmp_path, capsys):
    teacher_dir = tmp_path / "teacher"
    model(4).save_pretrained(teacher_dir)
    t = make_distill_trainer(SFT, "tiny", eval_path=SFT_EVAL, init_from=teacher_dir, steps=2, batch_size=2, seq_len=128, device="cpu", progress=False, live_plot=False)
    assert t.model.config.num_hidden_layers == 2 and not any(p.requires_grad for p in t.teacher.parameters())
    assert t.loss_fn.keywords["T"] == 2.0 and t.loss_fn.keywords["alpha"] == 0.5
    t.fit()
    assert {"eval_loss", "ce", "kl", "acc"} <= set(t.eval_history[-1])
    out = tmp_path / "run"
    rc = main(["train", "distill", "--preset", "tiny", "--init-from", str(teacher_dir), "--out", str(out), "--steps", "2", "--batch-size", "2",
               "--temperature", "3", "--alpha", "0.2", "--device", "cpu", "--no-progress"])
    assert rc == 0 and "step 2: train loss" in capsys.readouterr().out
    assert MiniMindForCausalLM.from_pretrained(out / "model").config.num_hidden_layers == 2
