"Unit tests for minimind.model (tiny configs; the notebook 01_attention_rope holds the teaching versions)."
import math
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from minimind.model import *

SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=256, max_position_embeddings=256)


def tiny(**kw):
    torch.manual_seed(0)
    m = MiniMindForCausalLM(MiniMindConfig(**{**SMALL, **kw})).eval()
    with torch.no_grad():  # non-trivial norm gains so a misplaced norm shows up
        for n, p in m.named_parameters():
            if n.endswith("norm.weight"): p.uniform_(0.5, 1.5)
    return m


@pytest.mark.parametrize("name,n", [("minimind2-small", 25_829_888), ("minimind2", 104_030_976), ("minimind3", 63_912_192)])
def test_published_param_counts(name, n):
    with torch.device("meta"):
        assert MiniMindForCausalLM(MiniMindConfig.from_preset(name)).num_params() == n


def test_config_roundtrip_and_errors(tmp_path):
    c = MiniMindConfig.from_preset("minimind3", rope_scaling={"type": "yarn", "factor": 4})
    assert (c.head_dim, c.intermediate_size, c.qk_norm, c.rms_norm_eps) == (96, 2432, True, 1e-6)
    c.save(tmp_path)
    assert MiniMindConfig.load(tmp_path) == c
    assert MiniMindConfig.from_dict({**c.to_dict(), "architectures": ["X"], "flash_attn": True}) == c
    assert MiniMindConfig.from_preset("minimind2-small").intermediate_size == 1408
    with pytest.raises(ValueError, match="multiple"): MiniMindConfig(num_attention_heads=8, num_key_value_heads=3)
    with pytest.raises(ValueError, match="rope_scaling"): MiniMindConfig(rope_scaling={"type": "ntk", "factor": 2})
    with pytest.raises(KeyError, match="unknown preset"): MiniMindConfig.from_preset("nope")


def test_rmsnorm_matches_torch():
    x = torch.randn(3, 7, 32)
    ours, ref = RMSNorm(32, 1e-5), nn.RMSNorm(32, eps=1e-5)
    with torch.no_grad(): ours.weight.normal_(); ref.weight.copy_(ours.weight)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=1e-5)
    assert ours(x.bfloat16()).dtype == torch.bfloat16


def test_rope_matches_complex_reference():
    d, T = 32, 20
    x = torch.randn(T, d, dtype=torch.float64)
    pos = torch.arange(T)
    out = apply_rope(x.float()[None, :, None], *rope_cos_sin(pos[None], rope_inv_freq(d)[0]))[0, :, 0]
    perm = torch.stack([torch.arange(d // 2), torch.arange(d // 2) + d // 2], -1).flatten()
    inv = 1.0 / 1e6 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    xc = torch.view_as_complex(x[:, perm].reshape(T, d // 2, 2).contiguous())
    ref = torch.view_as_real(xc * torch.polar(torch.ones(T, d // 2, dtype=torch.float64), pos[:, None].double() * inv)).reshape(T, d)
    torch.testing.assert_close(out[:, perm].double(), ref, atol=1e-5, rtol=1e-5)


def test_rope_relative_and_scaling():
    inv = rope_inv_freq(64)[0]
    q, k = torch.randn(2, 64)
    def score(m, n, inv=inv):
        cos, sin = rope_cos_sin(torch.tensor([[m, n]]), inv)
        r = apply_rope(torch.stack([q, k])[None, :, None], cos, sin)[0, :, 0]
        return (r[0] @ r[1]).item()
    assert abs(score(9, 2) - score(509, 502)) < 1e-3
    lin = rope_inv_freq(64, rope_scaling={"type": "linear", "factor": 4})[0]
    assert abs(score(40, 8, lin) - score(10, 2)) < 1e-3
    yarn, af = rope_inv_freq(64, rope_scaling={"type": "yarn", "factor": 16, "original_max_position_embeddings": 2048})
    torch.testing.assert_close(yarn[:4], inv[:4]); torch.testing.assert_close(yarn[-4:], inv[-4:] / 16)
    assert af == 1.0 and (yarn <= inv).all()


def test_sdpa_matches_explicit_with_cache_and_padding():
    q, k, v = torch.randn(3, 2, 4, 6, 8).unbind(0)
    torch.testing.assert_close(explicit_attention(q, k, v)[0], F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-6, rtol=1e-5)
    am = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    m = attention_mask_4d(2, 6, am)  # 2 new queries after 4 cached keys, row 0 left-padded
    out, w = explicit_attention(q[:, :, -2:], k, v, m)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q[:, :, -2:], k, v, attn_mask=m), atol=1e-6, rtol=1e-5)
    assert w[0, :, :, :2].abs().sum() == 0
    with pytest.raises(ValueError, match="attention_mask covers"): attention_mask_4d(2, 7, am)


def test_forward_loss_contract():
    m = tiny()
    ids = torch.randint(0, 256, (2, 9))
    lbl = ids.clone(); lbl[:, :4] = -100
    out = m(ids, labels=lbl)
    assert out.logits.shape == (2, 9, 256) and out.aux_loss.shape == () and out.aux_loss.item() == 0
    ref = F.cross_entropy(out.logits[:, 3:-1].reshape(-1, 256), ids[:, 4:].reshape(-1))
    torch.testing.assert_close(out.loss, ref)
    assert m.lm_head.weight is m.model.embed_tokens.weight


def test_state_dict_keys():
    sd = tiny(qk_norm=True).state_dict()
    expected = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(2):
        expected |= {f"model.layers.{i}.self_attn.{p}_proj.weight" for p in "qkvo"}
        expected |= {f"model.layers.{i}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")}
        expected |= {f"model.layers.{i}.{n}.weight" for n in ("input_layernorm", "post_attention_layernorm", "self_attn.q_norm", "self_attn.k_norm")}
    assert set(sd) == expected


@pytest.mark.parametrize("kw,T", [({}, 12), ({"rope_scaling": {"type": "linear", "factor": 4.0}}, 150),
                                  ({"rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}}, 150),
                                  ({"qk_norm": True, "rms_norm_eps": 1e-6}, 12)])
def test_same_logits_as_transformers(kw, T):
    m = tiny(**kw)
    hf = hf_model_from(m)  # LlamaForCausalLM, or Qwen3ForCausalLM for qk_norm; strict load of our state dict
    ids = torch.randint(0, 256, (2, T))
    with torch.no_grad():
        torch.testing.assert_close(m(ids).logits, hf(ids).logits, atol=1e-4, rtol=1e-4)
        am = torch.ones(2, T, dtype=torch.long); am[0, :3] = 0      # left padding, HF given the same positions
        pos = (am.cumsum(-1) - 1).clamp(min=0)
        a, b = m(ids, attention_mask=am).logits, hf(ids, attention_mask=am, position_ids=pos).logits
        torch.testing.assert_close(a[:, 3:], b[:, 3:], atol=1e-4, rtol=1e-4)


def test_save_load_roundtrip(tmp_path):
    m = tiny()
    ids = torch.randint(0, 256, (1, 7))
    m.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    back = MiniMindForCausalLM.from_pretrained(tmp_path / "m")
    assert torch.equal(back(ids).logits, m(ids).logits) and back.lm_head.weight is back.model.embed_tokens.weight
    sd = {f"_orig_mod.{k}": v for k, v in m.state_dict().items()}  # torch.compile'd checkpoint, MiniMind .pth style
    torch.save(sd, tmp_path / "full_sft_64.pth")
    assert torch.equal(MiniMindForCausalLM.from_pretrained(tmp_path / "full_sft_64.pth", config=m.config)(ids).logits, m(ids).logits)
    sd = m.state_dict(); sd.pop("model.norm.weight"); torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad.pth: weights do not fit the config: Missing key"): MiniMindForCausalLM.from_pretrained(tmp_path / "bad.pth", config=m.config)
    with pytest.raises(FileNotFoundError, match="config.json"): MiniMindForCausalLM.from_pretrained(tmp_path / "bad.pth")


def test_sampling_helpers():
    lg = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    assert apply_repetition_penalty(lg, torch.tensor([[0, 1, 1]]), 2.0).tolist() == [[1.0, -2.0, 0.5, 3.0]]
    assert top_k_filter(lg, 2).isfinite().tolist() == [[True, False, False, True]]
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    for p, keep in [(0.5, [1, 0, 0, 0]), (0.6, [1, 1, 0, 0]), (0.9, [1, 1, 1, 0]), (1.0, [1, 1, 1, 1])]:
        assert top_p_filter(probs.log(), p).isfinite().int().tolist() == [keep]
    assert sample_next(lg, temperature=0).tolist() == [3]
    g = torch.Generator().manual_seed(0)
    draws = torch.cat([sample_next(probs.log().expand(1000, 4), 1.0, top_k=2, generator=g) for _ in range(2)])
    assert set(draws.tolist()) == {0, 1} and abs((draws == 0).float().mean() - 0.625) < 0.05


def test_generate_cache_equivalence_and_stream():
    m = tiny()
    prompt = torch.randint(3, 256, (2, 6))
    a, la = m.generate(prompt, 16, temperature=0, eos_token_id=None, return_logits=True)
    b, lb = m.generate(prompt, 16, temperature=0, eos_token_id=None, use_cache=False, return_logits=True)
    assert torch.equal(a, b) and a.shape == (2, 22)
    torch.testing.assert_close(la, lb, atol=1e-4, rtol=1e-4)
    assert list(m.stream_generate(prompt[0].tolist(), 16, temperature=0, eos_token_id=None)) == a[0, 6:].tolist()
    first = int(a[0, 6])
    s = list(m.stream_generate(prompt[0], 16, temperature=0, eos_token_id=first))
    assert s == [first]


def test_generate_left_padding():
    m = tiny()
    p = torch.randint(3, 256, (2, 7))
    short = p[1, 2:]
    padded = torch.stack([p[0], torch.cat([torch.zeros(2, dtype=torch.long), short])])
    am = torch.tensor([[1] * 7, [0, 0] + [1] * 5])
    out = m.generate(padded, 10, temperature=0, eos_token_id=None, attention_mask=am)
    assert torch.equal(out[1, 7:], m.generate(short[None], 10, temperature=0, eos_token_id=None)[0, 5:])
    assert torch.equal(out[0], m.generate(p[:1], 10, temperature=0, eos_token_id=None)[0])


def test_attention_maps():
    m = tiny()
    maps = attention_maps(m, list(range(5, 15)))
    assert maps.shape == (2, 4, 10, 10)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 4, 10))
    assert maps.triu(1).abs().sum() == 0


def test_chunked_prefill_matches_full_forward():
    m = tiny()
    ids = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        full = m(ids).logits
        first = m(ids[:, :6], use_cache=True)
        rest = m(ids[:, 6:], past_key_values=first.past_key_values, use_cache=True)
    torch.testing.assert_close(torch.cat([first.logits, rest.logits], 1), full, atol=1e-5, rtol=1e-5)
    assert [tuple(k.shape) for k, v in rest.past_key_values] == [(2, 10, 2, 16)] * 2   # (B, S, n_kv, hd)


def test_rope_frequencies_survive_dtype_cast_and_checkpoint_extras(tmp_path):
    m = tiny()
    m16 = tiny().to(torch.bfloat16)
    assert m16.model.rotary_emb.inv_freq.dtype == torch.float32
    sd = {**m.state_dict(), "model.freqs_cos": torch.zeros(4, 16), "model.freqs_sin": torch.zeros(4, 16)}
    torch.save(sd, tmp_path / "old.pth")  # derived RoPE tables in a checkpoint are dropped, not an error
    ids = torch.randint(0, 256, (1, 5))
    assert torch.equal(MiniMindForCausalLM.from_pretrained(tmp_path / "old.pth", config=m.config)(ids).logits, m(ids).logits)


def test_hf_config_dict():
    d = to_hf_config(MiniMindConfig.from_preset("minimind2-small", rope_scaling={"type": "yarn", "factor": 4}))
    assert d["architectures"] == ["LlamaForCausalLM"] and d["tie_word_embeddings"] and d["rope_theta"] == 1e6
    assert d["rope_parameters"]["rope_type"] == "yarn" and d["rope_parameters"]["attention_factor"] == 1.0
    assert to_hf_config(MiniMindConfig.from_preset("minimind3"))["architectures"] == ["Qwen3ForCausalLM"]


def test_kv_cache_in_place_grows_and_matches_legacy_tuples():
    "KVCache: prefill then decode past its capacity (it grows), with grad enabled; a list of (k, v) tuples still works."
    m = tiny()
    ids = torch.randint(0, 256, (2, 12))
    full = m(ids).logits
    cache = KVCache(len(m.model.layers), capacity=4)              # too small: grows 4 -> 8 -> 16
    out = [m(ids[:, :3], past_key_values=cache, use_cache=True).logits]
    for t in range(3, 12): out.append(m(ids[:, t:t + 1], past_key_values=cache, use_cache=True).logits)
    torch.testing.assert_close(torch.cat(out, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.len == 12 and cache.k.shape[3] == 16 and cache[0][0].shape == (2, 12, 2, 16)
    legacy = [(k.clone(), v.clone()) for k, v in m(ids[:, :8], use_cache=True).past_key_values]
    rest = m(ids[:, 8:], past_key_values=legacy, use_cache=True)
    torch.testing.assert_close(rest.logits, full[:, 8:], atol=1e-5, rtol=1e-5)
    assert rest.past_key_values.len == 12
