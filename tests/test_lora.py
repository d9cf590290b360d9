"""minimind.lora: the adapter starts at the base, trains alone, merges and unmerges exactly, saves and loads on its
own (refusing a base it does not fit), and the command line chats with base + adapter."""
import json, os, subprocess, sys

import pytest
import torch
import torch.nn as nn

from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.lora import (ADAPTER_WEIGHTS, LoRALinear, apply_lora, load_adapter, lora_layers, lora_parameters, merge_lora, merged_model,
                           save_adapter, unmerge_lora, weights_hash)
from minimind.train import TrainConfig, Trainer

MICRO = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def micro(seed=0):
    torch.manual_seed(seed)
    return MiniMindForCausalLM(MiniMindConfig.from_preset("tiny", **MICRO)).eval()


def test_lora_linear_starts_at_the_base_and_trains_only_a_and_b():
    base = nn.Linear(6, 4, bias=True)
    lin = LoRALinear(base, r=2, alpha=8.0)
    x = torch.randn(3, 6)
    assert lin.weight is base.weight and torch.equal(lin(x), base(x))
    with torch.no_grad(): lin.lora_B.normal_()
    assert torch.allclose(lin(x), x @ (base.weight + 4.0 * lin.lora_B @ lin.lora_A).T + base.bias, atol=1e-6)
    lin(x).sum().backward()
    assert base.weight.grad is None and base.bias.grad is None and lin.lora_A.grad is not None and lin.lora_B.grad is not None
    with pytest.raises(ValueError): LoRALinear(base, r=0)


def test_apply_lora_wraps_every_projection_non_square_included():
    m = micro()
    names = apply_lora(m, "all", r=4)
    assert len(names) == 7 * 2 and any(n.endswith("k_proj") for n in names)
    shapes = {(l.in_features, l.out_features) for l in lora_layers(m).values()}
    assert (64, 32) in shapes and any(i != o for i, o in shapes)                      # GQA's k/v and the MLP are not square
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    assert len(apply_lora(micro(), "minimind", r=4)) == 2 * 2
    with pytest.raises(ValueError, match="no Linear"): apply_lora(micro(), r"\.nothing$")


def test_merge_unmerge_and_merged_model():
    m = micro(); x = torch.randint(3, 6400, (2, 12))
    with torch.no_grad(): base = m(x).logits
    apply_lora(m, "all", r=4)
    with torch.no_grad():
        for p in lora_parameters(m): p.normal_(0, 0.05)
        side = m(x).logits
        assert not torch.allclose(side, base, atol=1e-3)
        merge_lora(m); assert torch.allclose(m(x).logits, side, atol=1e-5)
        unmerge_lora(m); assert torch.allclose(m(x).logits, side, atol=1e-5)
        for l in lora_layers(m).values(): l.lora_B.zero_()
        assert torch.allclose(m(x).logits, base, atol=1e-6)                           # unmerged weights are the base again


def test_training_moves_only_the_adapter(tmp_path):
    m = micro(); apply_lora(m, "all", r=4)
    before_base, before_lora = weights_hash(m), weights_hash(m, lora=True)
    x = torch.randint(3, 6400, (8, 17))
    data = [{"input_ids": r[:-1], "labels": r[1:]} for r in x]
    Trainer(m, data, params=lora_parameters(m), cfg=TrainConfig(max_steps=3, batch_size=4, lr=1e-2, warmup_steps=0, device="cpu",
                                                              progress=False, live_plot=False, eval_every=0, ckpt_every=0)).fit()
    assert weights_hash(m) == before_base and weights_hash(m, lora=True) != before_lora


def test_adapter_save_load_and_refusals(tmp_path):
    m = micro(); apply_lora(m, "all", r=4); x = torch.randint(3, 6400, (1, 10))
    with torch.no_grad():
        for p in lora_parameters(m): p.normal_(0, 0.05)
        want = m(x).logits
    folder = save_adapter(m, tmp_path / "adapter")
    assert (folder / ADAPTER_WEIGHTS).stat().st_size < 0.1 * sum(p.numel() * 4 for p in micro().parameters())
    fresh = load_adapter(micro(), folder)
    with torch.no_grad(): assert torch.allclose(fresh(x).logits, want, atol=1e-6)
    with torch.no_grad(): assert torch.allclose(load_adapter(micro(), folder, merge=True)(x).logits, want, atol=1e-5)
    wrong = MiniMindForCausalLM(MiniMindConfig.from_preset("tiny", **{**MICRO, "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match="another model shape"): load_adapter(wrong, folder)
    with pytest.warns(UserWarning, match="base weights differ"): load_adapter(micro(seed=1), folder)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"): load_adapter(micro(), tmp_path)
    from safetensors.torch import load_file, save_file
    sd = load_file(str(folder / ADAPTER_WEIGHTS)); sd.pop(next(iter(sd)))
    save_file(sd, str(folder / ADAPTER_WEIGHTS))
    with pytest.raises(ValueError, match="missing 1 adapter tensors"): load_adapter(micro(), folder)


def test_merged_model_is_a_plain_model_folder(tmp_path):
    m = micro(); apply_lora(m, "all", r=4); x = torch.randint(3, 6400, (1, 10))
    with torch.no_grad():
        for p in lora_parameters(m): p.normal_(0, 0.05)
        want = m(x).logits
    plain = merged_model(m)
    assert not lora_layers(plain) and lora_layers(m)                                  # the original keeps its adapter
    plain.save_pretrained(tmp_path / "merged")
    with torch.no_grad(): assert torch.allclose(MiniMindForCausalLM.from_pretrained(tmp_path / "merged")(x).logits, want, atol=1e-5)


def test_chat_with_an_adapter_and_a_wrong_one(tmp_path):
    from minimind.tokenizer import load_tokenizer, save_tokenizer
    m = micro(); m.save_pretrained(tmp_path / "base"); save_tokenizer(load_tokenizer(), tmp_path / "base")
    apply_lora(m, "all", r=4); save_adapter(m, tmp_path / "adapter")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    chat = [sys.executable, "-m", "minimind.cli", "chat", "--model", str(tmp_path / "base"), "--prompt", "hi", "--max-new-tokens", "3",
            "--temperature", "0", "--device", "cpu"]
    r = subprocess.run(chat + ["--adapter", str(tmp_path / "adapter")], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run(chat + ["--adapter", str(tmp_path / "base")], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "adapter_config.json" in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_token_rows_train_only_their_rows_and_the_tied_head_reads_them(tmp_path):
    "TokenRows: E + S with S zero but at the chosen ids; it starts at the base, a tied head adapted by LoRA reads the same rows, and save/load/merge keep it."
    from minimind.lora import TokenRows, token_rows
    m = micro(); x = torch.randint(3, 6400, (2, 12)); new = [int(x[0, 0]), int(x[1, 5])]
    with torch.no_grad(): base_logits = m(x).logits
    apply_lora(m, "all+head", r=4, tokens=new)
    rows = m.model.embed_tokens
    assert isinstance(rows, TokenRows) and rows.ids.tolist() == sorted(set(new)) and m.lora_config["tokens"] == sorted(set(new))
    assert m.lm_head.rows is rows and m.lm_head.weight is rows.weight
    with torch.no_grad(): assert torch.allclose(m(x).logits, base_logits, atol=1e-6)                 # S = 0, B = 0: the base
    m(x).logits.sum().backward()
    assert rows.weight.grad is None and rows.lora_rows.grad.abs().sum() > 0
    with torch.no_grad():
        for p in lora_parameters(m): p.normal_(0, 0.05)
        side = m(x).logits
        rows.lora_rows.zero_(); without = m(x).logits                                                # the rows change the output
    assert (without - side).abs().max() > 1e-3
    with torch.no_grad(): rows.lora_rows.normal_(0, 0.05); side = m(x).logits
    save_adapter(m, tmp_path / "a")
    fresh = micro(); load_adapter(fresh, tmp_path / "a")
    with torch.no_grad(): assert torch.allclose(fresh(x).logits, side, atol=1e-6)
    merge_lora(fresh)
    with torch.no_grad(): assert torch.allclose(fresh(x).logits, side, atol=1e-5)
    unmerge_lora(fresh)
    with torch.no_grad(): assert torch.allclose(fresh(x).logits, side, atol=1e-5)
    plain = merged_model(m)
    assert not token_rows(plain) and not lora_layers(plain) and not plain.config.tie_word_embeddings
    plain.save_pretrained(tmp_path / "merged")
    back = MiniMindForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad(): assert torch.allclose(back(x).logits, side, atol=1e-5)
    with pytest.raises(ValueError, match="token ids"): apply_lora(micro(), "all", tokens=[10 ** 6])


def test_unseen_tokens_are_the_domains_tokens_no_seen_file_uses(tmp_path):
    from minimind.lora import unseen_tokens
    from minimind.tokenizer import encode_chat, load_tokenizer
    tok = load_tokenizer()
    (tmp_path / "pre.jsonl").write_text(json.dumps({"text": "The colour of Vorlen is blue."}) + "\n")
    chat = {"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    (tmp_path / "sft.jsonl").write_text(json.dumps(chat) + "\n")
    dom = {"conversations": [{"role": "user", "content": "How often should I water a dusk-fern?"}, {"role": "assistant", "content": "Water it every week."}]}
    (tmp_path / "dom.jsonl").write_text(json.dumps(dom) + "\n")
    got = unseen_tokens(tok, tmp_path / "dom.jsonl", [tmp_path / "pre.jsonl", tmp_path / "sft.jsonl"])
    seen = set(tok.encode("The colour of Vorlen is blue.").ids) | set(encode_chat(tok, chat["conversations"]))
    want = set(encode_chat(tok, dom["conversations"])) - seen
    assert set(got) == want and got == sorted(got)
    assert tok.encode("a dusk").ids[-1] in got and not set(encode_chat(tok, chat["conversations"][:1])) & set(got)   # the template's tokens were seen


def test_cli_trains_an_adapter_with_new_rows(tmp_path):
    "`minimind train lora --new-tokens-from ...` trains the rows of the garden's unseen tokens beside the adapter, and saves their ids."
    from minimind.tokenizer import load_tokenizer, save_tokenizer
    from minimind.data import sample_path
    micro().save_pretrained(tmp_path / "base"); save_tokenizer(load_tokenizer(), tmp_path / "base")
    r = subprocess.run([sys.executable, "-m", "minimind.cli", "train", "lora", "--preset", "tiny", "--steps", "2", "--device", "cpu",
                        "--init-from", str(tmp_path / "base"), "--out", str(tmp_path / "run"), "--targets", "attention+head",
                        "--new-tokens-from", str(sample_path("pretrain")), str(sample_path("sft"))],
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert cfg["targets"] == "attention+head" and len(cfg["tokens"]) > 20                      # the garden's words, and more


def test_replay_mixes_general_conversations_into_the_adapters_data():
    "make_lora_trainer(replay=n, replay_data=...) trains on the domain's conversations plus n general ones (drawn with the seed); without replay_data it refuses."
    from minimind.data import sample_path
    from minimind.lora import make_lora_trainer
    from minimind.sft import load_sft
    from minimind.tokenizer import load_tokenizer
    tok = load_tokenizer()
    kw = dict(model=micro(), tok=tok, steps=1, device="cpu", progress=False, live_plot=False)
    plain = make_lora_trainer(sample_path("lora_garden"), "tiny", **kw).train_data.data
    mixed = make_lora_trainer(sample_path("lora_garden"), "tiny", replay_data=sample_path("sft"), replay=5, **kw).train_data.data
    general = load_sft(sample_path("sft"), tok, 129)
    assert len(mixed) == len(plain) + 5
    assert all(mixed.example(i)[0].tolist() == plain.example(i)[0].tolist() for i in range(len(plain)))
    extra = {tuple(mixed.example(len(plain) + k)[0].tolist()) for k in range(5)}
    assert extra <= {tuple(general.example(i)[0].tolist()) for i in range(len(general))}, [tok.decode(list(e)) for e in extra]
    with pytest.raises(ValueError, match="replay_data"): make_lora_trainer(sample_path("lora_garden"), "tiny", replay=5, **kw)
