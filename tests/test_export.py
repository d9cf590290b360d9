"""minimind.export, checked by each consumer: transformers (stock and remote-code folders), our importer on
MiniMind2/minimind-3 layouts, llama.cpp through llama-cpp-python (tokens, logits, greedy tokens), the ollama
template under Go-template rules, lm-evaluation-harness against `choice_accuracy`, and `minimind export`.

llama-cpp-python and lm-eval are the optional `export` and `eval` extras, which `make test` installs. Without them
these tests skip with that reason locally; under CI (the CI environment variable set) they fail instead."""
import contextlib, importlib, json, os, re, subprocess, sys, warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from minimind.export import (TokenizerMismatchWarning, check_pairing, export_gguf, export_hf, export_model, export_ollama,
                             gguf_tensors, import_model, lm_eval_task, llama_cpp_greedy, llama_cpp_model, permute_qk,
                             render_go_template, render_ollama, tokenizer_sha)
from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.tokenizer import BOS_ID, CHAT_TEMPLATE, EOS_ID, apply_chat_template, load_tokenizer, save_tokenizer

from minimind.score import choice_accuracy

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT / "dataset"


def need(module: str, extra: str):
    "Import an optional consumer; skip with the reason locally, fail under CI (which must run these tests)."
    try: return importlib.import_module(module)
    except ImportError:
        if os.environ.get("CI"): pytest.fail(f"{module} is missing under CI: `make test` installs the '{extra}' extra")
        pytest.skip(f"{module} is not installed: pip install -e '.[{extra}]' (make test installs it)")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def confident_model(seed=0, **kw) -> MiniMindForCausalLM:
    "A random tiny model with large weights (varied, confident greedy tokens) and norm gains that are not all one."
    torch.manual_seed(seed)
    m = MiniMindForCausalLM(MiniMindConfig.from_preset("tiny", initializer_range=0.1, **kw)).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "norm" in n: p.copy_(1 + 0.3 * torch.randn_like(p))
    return m


def logits(m, ids) -> torch.Tensor:
    with torch.no_grad(): return m(torch.tensor([ids])).logits[0]


def greedy(m, ids, n=24) -> list:
    return m.generate(torch.tensor([ids]), max_new_tokens=n, temperature=0, eos_token_id=EOS_ID)[0, len(ids):].tolist()


PROMPT = "The colour of Finkim is"
MIXED = ["MiniMind 的参数量是 25,829,888 个；2024年有366天。Tokens: don't split 3.14159!",
         "  两个空格 and\ttabs\n\n\nnew lines 1234567890 ４５ full-width, émoji 😀 and ﬁ ligature",
         "<|im_start|>user\n你好，who are you?<|im_end|>\n<|im_start|>assistant\n<think>先想一想</think>I'm MiniMind.<|im_end|>\n"]


def sample_texts(n=40) -> list:
    "Texts the course really tokenizes: pretraining documents and ChatML-rendered SFT conversations from dataset/."
    pre = [json.loads(l)["text"] for l in (DATASET / "pretrain.jsonl").read_text(encoding="utf-8").splitlines()[:n]]
    sft = [apply_chat_template(json.loads(l)["conversations"]) for l in (DATASET / "sft.jsonl").read_text(encoding="utf-8").splitlines()[:n]]
    return MIXED + pre + sft


ARCHS = {"llama": {}, "qwen3": {"qk_norm": True, "rms_norm_eps": 1e-6}}


# ---- transformers -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_hf_stock_folder(arch, tok, tmp_path):
    "transformers loads the folder as its own Llama/Qwen3 (no remote code): equal logits, greedy tokens, tokenizer, template."
    from transformers import AutoModelForCausalLM, AutoTokenizer
    m = confident_model(**ARCHS[arch])
    out = export_hf(m, tok, tmp_path / "hf")
    cfg = json.loads((out / "config.json").read_text())
    name = "Qwen3ForCausalLM" if arch == "qwen3" else "LlamaForCausalLM"
    assert cfg["architectures"] == [name] and "auto_map" not in cfg and not list(out.glob("*.py"))
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == name
    for text in [PROMPT, MIXED[0], MIXED[2]]:
        ids = [BOS_ID] + tok.encode(text).ids
        with torch.no_grad(): d = (hf(torch.tensor([ids])).logits[0] - logits(m, ids)).abs().max().item()
        assert d < 1e-4, (text, d)
    ids = [BOS_ID] + tok.encode(PROMPT).ids
    ours = greedy(m, ids)
    assert len(set(ours)) > 5, "the test model's greedy tokens should vary"
    assert hf.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids):].tolist() == ours
    ht = AutoTokenizer.from_pretrained(out)
    for text in sample_texts(10): assert ht(text)["input_ids"] == tok.encode(text).ids
    chat = [{"role": "system", "content": "You are MiniMind."}, {"role": "user", "content": "你好"},
            {"role": "assistant", "content": "Hi {{ x }}"}, {"role": "user", "content": "2+3?"}]
    assert ht.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == apply_chat_template(chat, True)
    assert ht.eos_token == "<|im_end|>" and json.loads((out / "generation_config.json").read_text())["eos_token_id"] == EOS_ID


def test_hf_f16_folder(tok, tmp_path):
    "--dtype f16 stores float16 weights that transformers loads; q8_0 is refused for hf with a clear message."
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM
    m = confident_model()
    out = export_hf(m, tok, tmp_path / "hf16", dtype="f16")
    with safe_open(str(out / "model.safetensors"), "pt") as f: assert f.get_tensor("model.norm.weight").dtype == torch.float16
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = [BOS_ID] + tok.encode(PROMPT).ids
    with torch.no_grad(): assert (hf(torch.tensor([ids])).logits[0] - logits(m, ids)).abs().max() < 0.05
    with pytest.raises(ValueError, match="q8_0 is for GGUF"): export_hf(m, tok, tmp_path / "bad", dtype="q8_0")
    assert not (tmp_path / "bad").exists()


def test_hf_moe_remote_code(tok, tmp_path):
    "MoE: auto_map to generated code in the folder (trust_remote_code); equal logits and greedy tokens; no course import."
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.dynamic_module_utils import get_imports
    m = confident_model(use_moe=True)
    out = export_hf(m, tok, tmp_path / "hf_moe")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "minimind" and cfg["auto_map"]["AutoModelForCausalLM"] == "modeling_minimind.MiniMindHFForCausalLM"
    assert "minimind" not in get_imports(out / "modeling_minimind.py")
    hf = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    ids = [BOS_ID] + tok.encode(MIXED[0]).ids
    with torch.no_grad(): assert (hf(torch.tensor([ids])).logits[0] - logits(m, ids)).abs().max() < 1e-4
    ids = [BOS_ID] + tok.encode(PROMPT).ids
    assert hf.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids):].tolist() == greedy(m, ids, 12)
    assert AutoTokenizer.from_pretrained(out, trust_remote_code=True)(PROMPT)["input_ids"] == tok.encode(PROMPT).ids


# ---- importing released layouts -----------------------------------------------------------------------------------

def fp16_rounded(m):
    "The model whose weights a float16 checkpoint of `m` holds."
    r = MiniMindForCausalLM(m.config).eval()
    r.load_state_dict({k: v.half().float() for k, v in m.state_dict().items()})
    return r


def write_layout(kind, m, tok, folder: Path) -> Path:
    "Write `m` the way MiniMind's own scripts lay it out (from their source: convert_model.py, the training scripts)."
    folder.mkdir(parents=True)
    c = m.config
    if kind == "minimind2-transformers":  # convert_torch2transformers_minimind: pytorch_model.bin (fp16), MiniMind2 fields
        cfg = {"architectures": ["MiniMindForCausalLM"], "model_type": "minimind", "torch_dtype": "float16",
               "auto_map": {"AutoConfig": "model_minimind.MiniMindConfig", "AutoModelForCausalLM": "model_minimind.MiniMindForCausalLM"},
               "hidden_size": c.hidden_size, "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
               "num_key_value_heads": c.num_key_value_heads, "vocab_size": c.vocab_size, "intermediate_size": None,
               "max_position_embeddings": c.max_position_embeddings, "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta,
               "flash_attn": True, "dropout": 0.0, "hidden_act": "silu", "use_moe": c.use_moe, "n_routed_experts": c.n_routed_experts,
               "n_shared_experts": c.n_shared_experts, "num_experts_per_tok": c.num_experts_per_tok, "scoring_func": "softmax",
               "aux_loss_alpha": 0.1, "seq_aux": True, "norm_topk_prob": True, "inference_rope_scaling": False}
        (folder / "config.json").write_text(json.dumps(cfg))
        torch.save({k: v.half() for k, v in m.state_dict().items()}, folder / "pytorch_model.bin")
        save_tokenizer(tok, folder)
        return folder
    if kind == "minimind3-transformers":  # minimind-3: q/k norm always on (no field), MoE as num_experts, no shared experts
        cfg = {"architectures": ["MiniMindForCausalLM"], "model_type": "minimind", "hidden_size": c.hidden_size,
               "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
               "num_key_value_heads": c.num_key_value_heads, "head_dim": c.head_dim, "intermediate_size": c.intermediate_size,
               "vocab_size": c.vocab_size, "max_position_embeddings": c.max_position_embeddings, "rms_norm_eps": c.rms_norm_eps,
               "rope_theta": c.rope_theta, "inference_rope_scaling": False, "rope_scaling": None, "flash_attn": True,
               "use_moe": c.use_moe, "num_experts": c.n_routed_experts, "num_experts_per_tok": c.num_experts_per_tok,
               "moe_intermediate_size": c.intermediate_size, "norm_topk_prob": True, "router_aux_loss_coef": 5e-4}
        (folder / "config.json").write_text(json.dumps(cfg))
        from safetensors.torch import save_file
        sd = {k: v.contiguous() for k, v in m.state_dict().items() if k != "lm_head.weight"}
        save_file(sd, str(folder / "model.safetensors"))
        save_tokenizer(tok, folder)
        return folder
    if kind == "minimind-pth":  # the training scripts: torch.save({k: v.half()}) as out/full_sft_<hidden>.pth
        p = folder / f"full_sft_{c.hidden_size}.pth"
        torch.save({k: v.half() for k, v in m.state_dict().items()}, p)
        return p
    raise ValueError(kind)


LAYOUTS = {  # name: (layout, model kwargs, fp16 weights?, import kwargs)
    "minimind2-dense": ("minimind2-transformers", {}, True, {}),
    "minimind2-moe": ("minimind2-transformers", {"use_moe": True}, True, {}),
    "minimind3-dense": ("minimind3-transformers", {"qk_norm": True, "rms_norm_eps": 1e-6}, False, {}),
    "minimind3-moe": ("minimind3-transformers", {"qk_norm": True, "rms_norm_eps": 1e-6, "use_moe": True, "n_shared_experts": 0,
                                                 "num_experts_per_tok": 1}, False, {}),
    "pth-with-preset": ("minimind-pth", {}, True, {"preset": "tiny"}),
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_import_released_layouts(name, tok, tmp_path):
    "Each released layout loads into ours with the right config (q/k norm and MoE fields read) and the same logits."
    kind, kw, fp16, imp = LAYOUTS[name]
    m = confident_model(**kw)
    src = write_layout(kind, m, tok, tmp_path / name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got, got_tok = import_model(src, tokenizer=tok if kind == "minimind-pth" else None, **imp)
    assert not [w for w in caught if w.category is TokenizerMismatchWarning], [str(w.message) for w in caught]
    ref = fp16_rounded(m) if fp16 else m
    moe_fields = ("n_routed_experts", "n_shared_experts", "num_experts_per_tok") if m.config.use_moe else ()
    for f in ("qk_norm", "use_moe", "intermediate_size", "rms_norm_eps", "num_key_value_heads", *moe_fields):
        assert getattr(got.config, f) == getattr(m.config, f), f
    ids = [BOS_ID] + tok.encode(MIXED[0]).ids
    assert (logits(got, ids) - logits(ref, ids)).abs().max() < 1e-5
    assert tokenizer_sha(got_tok) == tokenizer_sha(tok)


@pytest.mark.parametrize("arch", ARCHS)
def test_import_our_exports_roundtrip(arch, tok, tmp_path):
    "Our own hf export (Llama/Qwen3 config) and our model folder come back exactly."
    m = confident_model(**ARCHS[arch])
    m.save_pretrained(tmp_path / "ours"); save_tokenizer(tok, tmp_path / "ours")
    ids = [BOS_ID] + tok.encode(PROMPT).ids
    for src in (tmp_path / "ours", export_hf(m, tok, tmp_path / "hf")):
        got, _ = import_model(src)
        assert got.config.qk_norm == m.config.qk_norm and got.config.tie_word_embeddings
        assert torch.equal(logits(got, ids), logits(m, ids))


def test_import_errors_name_the_file(tok, tmp_path):
    "Wrong inputs raise errors that name the file and say what is wrong."
    m = confident_model()
    pth = write_layout("minimind-pth", m, tok, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"full_sft_128\.pth: no config\.json beside it; pass a preset"): import_model(pth)
    with pytest.raises(ValueError, match=r"full_sft_128\.pth: the weights do not fit"): import_model(pth, preset="minimind2-small")
    with pytest.raises(ValueError, match="unknown preset 'nope'"): import_model(pth, preset="nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: no model.safetensors"): import_model(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no such file"): import_model(tmp_path / "missing")
    bad = tmp_path / "gpt2"; bad.mkdir(); torch.save(m.state_dict(), bad / "pytorch_model.bin")
    (bad / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type 'gpt2'"): import_model(bad)


def test_tokenizer_pairing_warnings(tok, tmp_path):
    "A tokenizer of another size, or of the same size but another hash than the one recorded at export, warns."
    from tokenizers import Tokenizer
    out = export_hf(confident_model(), tok, tmp_path / "hf")
    with warnings.catch_warnings():
        warnings.simplefilter("error", TokenizerMismatchWarning)
        import_model(out)                                            # its own tokenizer: silent
    d = json.loads(tok.to_str()); v = d["model"]["vocab"]
    v["Ġthe"], v["Ġof"] = v["Ġof"], v["Ġthe"]                        # same size, different ids (like MiniMind's own tokenizer)
    with pytest.warns(TokenizerMismatchWarning, match="recorded when the model was saved"):
        import_model(out, tokenizer=Tokenizer.from_str(json.dumps(d)))
    with pytest.warns(TokenizerMismatchWarning, match="8000 embedding rows"):
        check_pairing(MiniMindConfig.from_preset("tiny", vocab_size=8000), tok)
    with pytest.warns(TokenizerMismatchWarning, match="only 6000 embedding rows"):
        check_pairing(MiniMindConfig.from_preset("tiny", vocab_size=6000), tok)
    with pytest.warns(TokenizerMismatchWarning, match="no tokenizer beside it"):
        import_model(write_layout("minimind-pth", confident_model(), tok, tmp_path / "out"), preset="tiny")


# ---- GGUF and llama.cpp -------------------------------------------------------------------------------------------

def reader_fields(path) -> dict:
    import gguf
    r = gguf.GGUFReader(path)
    return r, {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}


@pytest.mark.parametrize("arch", ARCHS)
def test_gguf_layout(arch, tok, tmp_path):
    "The file as gguf's reader sees it: architecture, tokenizer metadata and types, merges, permuted q/k, tensor types."
    m = confident_model(**ARCHS[arch])
    r, f = reader_fields(export_gguf(m, tok, tmp_path / "m.gguf", "q8_0"))
    assert (f["general.architecture"], f["tokenizer.ggml.model"], f["tokenizer.ggml.pre"]) == (arch, "gpt2", "qwen2")
    d = json.loads(tok.to_str())
    assert f["tokenizer.ggml.merges"] == [" ".join(x) if isinstance(x, list) else x for x in d["model"]["merges"]]
    assert f["tokenizer.ggml.tokens"] == [tok.id_to_token(i) for i in range(6400)]
    assert f["tokenizer.ggml.token_type"] == [3, 3, 3, 4, 4, 4, 4] + [1] * (6400 - 7)
    assert f["tokenizer.chat_template"] == CHAT_TEMPLATE and f["tokenizer.ggml.eos_token_id"] == EOS_ID
    assert f[f"{arch}.attention.head_count_kv"] == m.config.num_key_value_heads and f[f"{arch}.rope.freq_base"] == 1e6
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["token_embd.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32" and "output.weight" not in types
    assert ("blk.0.attn_q_norm.weight" in types) == (arch == "qwen3")
    t32 = gguf_tensors(m)
    k = m.model.layers[1].self_attn.k_proj.weight.detach()
    assert np.array_equal(t32["blk.1.attn_k.weight"], (permute_qk(k, 2) if arch == "llama" else k).numpy())


def test_gguf_refuses_what_llama_cpp_cannot_run(tok, tmp_path):
    "MoE and RoPE scaling are refused with a message, and no file is left behind."
    with pytest.raises(ValueError, match="MoE is not supported"): export_gguf(confident_model(use_moe=True), tok, tmp_path / "moe.gguf")
    m = MiniMindForCausalLM(MiniMindConfig.from_preset("tiny", rope_scaling={"type": "linear", "factor": 2.0}))
    with pytest.raises(ValueError, match="rope_scaling"): export_gguf(m, tok, tmp_path / "rope.gguf")
    with pytest.raises(ValueError, match="dtype 'q4_0'"): export_gguf(confident_model(), tok, tmp_path / "x.gguf", "q4_0")
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def gguf_files(tok, tmp_path_factory):
    "The confident test model of each architecture as f32, f16 and q8_0 GGUF files."
    d = tmp_path_factory.mktemp("gguf")
    models = {a: confident_model(**kw) for a, kw in ARCHS.items()}
    return models, {(a, dt): export_gguf(models[a], tok, d / f"{a}-{dt}.gguf", dt) for a in ARCHS for dt in ("f32", "f16", "q8_0")}


@contextlib.contextmanager
def llama(path, **kw):
    "llama.cpp on its plain CPU kernels (llama_cpp_model: its AMX path crashes on q8_0 on some Xeons)."
    need("llama_cpp", "export")
    llm = llama_cpp_model(path, n_ctx=1024, n_threads=1, **kw)
    try: yield llm
    finally: llm.close()


@pytest.mark.parametrize("arch", ARCHS)
def test_llama_cpp_tokenizes_like_us(arch, tok, gguf_files):
    "llama.cpp, from the GGUF metadata alone, cuts mixed Chinese/English/digits/specials and the sample into our ids."
    _, files = gguf_files
    with llama(files[(arch, "f16")], vocab_only=True) as llm:
        for text in sample_texts():
            ours = tok.encode(text).ids
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == ours, text[:80]
            if "<|" not in text: assert llm.detokenize(ours).decode() == text


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("arch", ARCHS)
def test_llama_cpp_logits_and_greedy(arch, dtype, tok, gguf_files):
    "llama.cpp's logits match ours (f32 1e-5 of their spread, f16 1e-2, q8_0 within quantization error) and so do its greedy tokens."
    models, files = gguf_files
    m = models[arch]
    ids = [BOS_ID] + tok.encode(PROMPT).ids
    ours_greedy = greedy(m, ids)
    seq = ids + ours_greedy                               # teacher-forced: compare every position of our greedy path
    kv = {"type_k": 0, "type_v": 0} if dtype == "f32" else {}  # llama.cpp's KV cache is f16 unless asked for f32
    with llama(files[(arch, dtype)], logits_all=True, **kv) as llm:
        llm.reset(); llm.eval(seq)
        theirs = torch.tensor(np.array(llm.scores[:len(seq)]))
        llm_greedy = llama_cpp_greedy(llm, ids, 24)
    ours = logits(m, seq)
    diff = (theirs - ours).abs().max().item() / ours.std().item()
    agree = (theirs.argmax(-1) == ours.argmax(-1)).float().mean().item()
    if dtype == "f32":
        assert diff < 1e-4 and agree == 1, (diff, agree)
        assert llm_greedy == ours_greedy
    elif dtype == "f16":      # f16 rounding may flip a near-tie: every position whose top-2 gap exceeds twice the error must agree
        top2 = ours.topk(2, -1).values
        clear = (top2[:, 0] - top2[:, 1]) > 2 * (theirs - ours).abs().max()
        same = theirs.argmax(-1) == ours.argmax(-1)
        assert diff < 3e-2 and bool(same[clear].all()) and clear.float().mean() >= 0.8, (diff, agree, clear.float().mean().item())
        k = next((j for j in range(len(ours_greedy)) if not clear[len(ids) - 1 + j]), len(ours_greedy))
        assert llm_greedy[:k] == ours_greedy[:k]                   # the same greedy path up to the first near-tie
    else:  # 8.5 bits per weight: close, not identical (measured 0.23-0.36 and 83-97% on this chaotic random model)
        assert diff < 0.6 and agree >= 0.75, (diff, agree)


def test_llama_cpp_check_catches_a_missing_permutation(tok, tmp_path, monkeypatch):
    "The check above can fail: a `llama` GGUF without the q/k permutation is far off (measured 5-7 spreads, ~15% agreement)."
    import minimind.export
    m = confident_model()
    monkeypatch.setattr(minimind.export, "permute_qk", lambda w, n_heads: w)
    path = export_gguf(m, tok, tmp_path / "unpermuted.gguf", "f32")
    ids = [BOS_ID] + tok.encode(PROMPT).ids
    seq = ids + greedy(m, ids)
    with llama(path, logits_all=True, type_k=0, type_v=0) as llm:
        llm.eval(seq); theirs = torch.tensor(np.array(llm.scores[:len(seq)]))
    ours = logits(m, seq)
    assert (theirs - ours).abs().max().item() / ours.std().item() > 1 and (theirs.argmax(-1) == ours.argmax(-1)).float().mean() < 0.5


# ---- ollama -----------------------------------------------------------------------------------------------------

def test_ollama_modelfile_renders_our_chatml(tok, tmp_path):
    "The Modelfile points at its GGUF, stops at <|im_end|>, and its Go template renders exactly our ChatML."
    from transformers import AutoTokenizer
    m = confident_model()
    out = export_ollama(m, tok, tmp_path / "ollama", "q8_0")
    lines = (out / "Modelfile").read_text().split("\n")
    assert lines[0] == "FROM ./model-q8_0.gguf" and (out / "model-q8_0.gguf").exists()
    text = (out / "Modelfile").read_text()
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.S)[1]
    assert re.findall(r'PARAMETER stop "(.*?)"', text) == ["<|im_end|>", "<|endoftext|>"]
    ht = AutoTokenizer.from_pretrained(export_hf(m, tok, tmp_path / "hf"))
    talks = [[{"role": "user", "content": "hi"}],
             [{"role": "system", "content": "You are MiniMind."}, {"role": "user", "content": "你好\n"},
              {"role": "assistant", "content": "{{ .Content }} {{- not a template -}}"}, {"role": "user", "content": " 2+3? "}],
             []]
    for talk in talks:
        rendered = render_ollama(template, talk)
        assert rendered == apply_chat_template(talk, add_generation_prompt=True)
        if talk: assert rendered == ht.apply_chat_template(talk, tokenize=False, add_generation_prompt=True)


def test_go_template_subset():
    "The renderer follows Go's trim rules and refuses what it does not implement (so a check cannot pass vacuously)."
    assert render_go_template("a  {{- .X -}}  b {{ range .L }}[{{ .Y }}]{{ end }}.", {"X": 1, "L": [{"Y": 2}, {"Y": 3}]}) == "a1b [2][3]."
    assert render_go_template("{{ range .L }}x{{ end }}", {"L": []}) == ""
    for bad, msg in [("{{ if .X }}y{{ end }}", "outside the Go-template subset"), ("{{ range .L }}", "without {{ end }}"),
                     ("{{ end }}", "without {{ range }}"), ("{{ .X | upper }}", "outside")]:
        with pytest.raises(ValueError, match=re.escape(msg)): render_go_template(bad, {"X": 1, "L": []})
    with pytest.raises(KeyError): render_go_template("{{ .Missing }}", {})


# ---- lm-evaluation-harness --------------------------------------------------------------------------------------

def test_lm_eval_matches_choice_accuracy(tok, tmp_path):
    "`lm_eval --model hf` on the exported folder scores the sample's held-out facts exactly as choice_accuracy does."
    need("lm_eval", "eval")
    facts = [json.loads(l) for l in (DATASET / "facts_eval.jsonl").read_text(encoding="utf-8").splitlines()][::9]
    assert {f["lang"] for f in facts} == {"en", "zh"}
    m = confident_model()
    ours = choice_accuracy(m, tok, facts)
    hf = export_hf(m, tok, tmp_path / "hf")
    task = lm_eval_task(facts, tmp_path / "task")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "ds_cache"),
           "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={hf},dtype=float32",
                        "--tasks", "minimind_facts", "--include_path", str(task), "--device", "cpu", "--batch_size", "32",
                        "--output_path", str(tmp_path / "results")], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(next((tmp_path / "results").rglob("results_*.json")).read_text())
    assert res["results"]["minimind_facts"]["acc,none"] == pytest.approx(ours, abs=1e-9)
    assert res["n-samples"]["minimind_facts"]["effective"] == len(facts)


# ---- minimind export --------------------------------------------------------------------------------------------

def test_cli_export(tok, tmp_path, capsys):
    "`minimind export hf|gguf|ollama` writes what the functions write; a user's mistake prints one line, no traceback."
    from minimind.cli import main
    m = confident_model()
    m.save_pretrained(tmp_path / "model"); save_tokenizer(tok, tmp_path / "model")
    assert main(["export", "hf", str(tmp_path / "model"), "--out", str(tmp_path / "hf")]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert main(["export", "gguf", str(tmp_path / "hf"), "--out", str(tmp_path / "g"), "--dtype", "q8_0"]) == 0
    assert main(["export", "ollama", str(tmp_path / "model"), "--out", str(tmp_path / "o")]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["Modelfile", "model-f16.gguf"]
    assert capsys.readouterr().out.count("wrote ") == 3
    assert main(["export", "hf", str(tmp_path / "model"), "--out", str(tmp_path / "x"), "--dtype", "q8_0"]) == 1
    assert capsys.readouterr().err.startswith("minimind: error: hf export: dtype 'q8_0' must be one of")
    assert not (tmp_path / "x").exists()
    pth = write_layout("minimind-pth", m, tok, tmp_path / "out")
    for args, said in [(["gguf", str(pth), "--preset", "minimind2-small"], f"{pth}: the weights do not fit"),
                       (["gguf", str(pth), "--preset", "x"], "unknown preset 'x'")]:
        assert main(["export", *args, "--out", str(tmp_path / "y")]) == 1
        err = capsys.readouterr().err
        assert err.startswith("minimind: error: ") and said in err and len(err.strip().splitlines()) == 1, err
    for args, said in [(["gguf", str(tmp_path / "nowhere")], f"{tmp_path / 'nowhere'}: no such file or folder"),
                       (["gguf", str(pth)], f"{pth}: no config.json beside it")]:  # the console entry point itself
        r = subprocess.run([sys.executable, "-m", "minimind.cli", "export", *args, "--out", str(tmp_path / "y")], capture_output=True, text=True)
        assert r.returncode == 1 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert r.stderr.startswith("minimind: error: ") and said in r.stderr, r.stderr
