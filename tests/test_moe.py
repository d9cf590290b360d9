"Tests for minimind.moe: preset size, dispatch vs references, aux-loss gradient, MiniMind2 compatibility, training."
import json, math
import pytest
import torch, torch.nn as nn
from minimind.model import MiniMindConfig, MiniMindForCausalLM, FeedForward
from minimind.moe import (MoEGate, MOEFeedForward, dispatch, moe_loop_reference, load_balance_loss,
                          active_params, capture_routing, expert_load, load_entropy)


def tiny_cfg(**kw):
    "A 2-layer MoE small enough for CPU tests."
    base = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                use_moe=True, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2, aux_loss_alpha=0.01)
    return MiniMindConfig(**{**base, **kw})


def on_meta(cfg):
    with torch.device("meta"): return MiniMindForCausalLM(cfg)


def test_preset_param_count():
    cfg = MiniMindConfig.from_preset("minimind2-moe")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (640, 8, 8, 2)
    assert (cfg.use_moe, cfg.n_routed_experts, cfg.n_shared_experts, cfg.num_experts_per_tok) == (True, 4, 1, 2)
    assert (cfg.scoring_func, cfg.aux_loss_alpha, cfg.seq_aux, cfg.norm_topk_prob) == ("softmax", 0.01, True, True)
    m = on_meta(cfg)
    assert sum(p.numel() for p in m.parameters()) == 145_029_760
    # embedding/head 4,096,000 + final norm 640 + 8 × (attention 1,024,000 + norms 1,280 + router 2,560 + 3 experts × 3,317,760)
    assert active_params(m) == 4_096_000 + 640 + 8 * (1_024_000 + 1_280 + 2_560 + 3 * 3_317_760)


def test_dense_active_equals_total():
    m = on_meta(tiny_cfg(use_moe=False))
    assert active_params(m) == sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("training", [True, False])
def test_dispatch_matches_loop(training):
    torch.manual_seed(0)
    cfg = tiny_cfg(n_routed_experts=6, num_experts_per_tok=3)
    gate, experts = MoEGate(cfg).train(training), nn.ModuleList([FeedForward(cfg) for _ in range(6)])
    x = torch.randn(3, 9, 32)
    outs = []
    for fn in (dispatch, moe_loop_reference):
        x_ = x.clone().requires_grad_()
        r = gate(x_)
        y = fn(x_.view(-1, 32), r.topk_idx, r.topk_weight, experts)
        params = [x_, gate.weight, *experts.parameters()]
        outs.append((y, torch.autograd.grad((y * torch.linspace(-1, 1, 32)).sum(), params)))
    (y1, g1), (y2, g2) = outs
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g2): torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_dispatch_with_idle_expert():
    "An expert that gets no token still runs (on an empty batch) and gets a zero gradient."
    torch.manual_seed(0)
    cfg = tiny_cfg()
    experts = nn.ModuleList([FeedForward(cfg) for _ in range(4)])
    x = torch.randn(5, 32)
    idx = torch.tensor([[0, 1]] * 5)
    w = torch.full((5, 2), 0.5)
    y = dispatch(x, idx, w, experts)
    torch.testing.assert_close(y, moe_loop_reference(x, idx, w, experts))
    y.sum().backward()
    assert experts[3].up_proj.weight.grad is not None and experts[3].up_proj.weight.grad.abs().sum() == 0


def minimind2_moe_forward(layer, x):
    "MiniMind2's MoE forward re-stated independently: its training path (duplicate each token k times, mask per "
    "expert, weighted sum) and its eval path (argsort, cumulative counts, scatter_add); both plus the shared experts."
    B, T, H = x.shape
    xf = x.reshape(-1, H)
    scores = (xf @ layer.gate.weight.T).softmax(-1)
    w, idx = scores.topk(layer.gate.top_k, dim=-1, sorted=False)
    w = w / (w.sum(-1, keepdim=True) + 1e-20)
    k = idx.shape[1]
    if layer.training:
        xr = xf.repeat_interleave(k, dim=0)
        flat = idx.reshape(-1)
        y = torch.empty_like(xr)   # MiniMind2 uses float16 here; in float32 the comparison can be tight
        for e, expert in enumerate(layer.experts): y[flat == e] = expert(xr[flat == e])
        y = (y.view(-1, k, H) * w.unsqueeze(-1)).sum(1)
    else:
        flat = idx.reshape(-1)
        order = flat.argsort()
        ends = flat.bincount(minlength=len(layer.experts)).cumsum(0).tolist()
        y = torch.zeros_like(xf)
        for e, end in enumerate(ends):
            start = 0 if e == 0 else ends[e - 1]
            if start == end: continue
            tok = order[start:end] // k
            out = layer.experts[e](xf[tok]) * w.reshape(-1, 1)[order[start:end]]
            y.scatter_add_(0, tok.view(-1, 1).expand(-1, H), out)
    y = y.view(B, T, H)
    for expert in layer.shared_experts: y = y + expert(x)
    return y


@pytest.mark.parametrize("training", [True, False])
def test_layer_matches_minimind2(training):
    torch.manual_seed(1)
    layer = MOEFeedForward(tiny_cfg(), FeedForward).train(training)
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), minimind2_moe_forward(layer, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seq_aux", [True, False])
def test_aux_loss_gradcheck(seq_aux):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, 8, generator=g, dtype=torch.float64)
    W = torch.randn(5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    def aux(W):
        s = (x @ W.T).softmax(-1)
        return load_balance_loss(s, s.topk(2, dim=-1).indices, 0.1, seq_aux)
    assert torch.autograd.gradcheck(aux, (W,))


def test_aux_loss_values_and_seq_vs_batch():
    E, k, a = 4, 2, 0.01
    uniform = torch.full((1, 8, E), 1 / E)
    assert math.isclose(load_balance_loss(uniform, torch.tensor([[0, 1], [2, 3]] * 4)[None], a).item(), a, rel_tol=1e-6)
    # two sequences collapsed onto different experts: balanced over the batch, collapsed per sequence
    s = torch.tensor([[0.5, 0.5, 0, 0]] * 4 + [[0, 0, 0.5, 0.5]] * 4).view(2, 4, E)
    idx = torch.tensor([[0, 1]] * 4 + [[2, 3]] * 4).view(2, 4, k)
    assert math.isclose(load_balance_loss(s, idx, a).item(), a * E / k, rel_tol=1e-6)
    assert math.isclose(load_balance_loss(s, idx, a, seq_aux=False).item(), a, rel_tol=1e-6)


def test_model_returns_aux_loss():
    torch.manual_seed(0)
    m = MiniMindForCausalLM(tiny_cfg())
    ids = torch.randint(0, 128, (2, 10))
    out = m(ids, labels=ids)
    assert out.aux_loss.ndim == 0 and out.aux_loss > 0
    torch.testing.assert_close(out.aux_loss, sum(l.mlp.aux_loss for l in m.model.layers))
    out.aux_loss.backward()
    assert m.model.layers[0].mlp.gate.weight.grad.abs().sum() > 0
    assert m.eval()(ids).aux_loss.item() == 0
    assert MiniMindForCausalLM(tiny_cfg(use_moe=False))(ids).aux_loss.item() == 0


MINIMIND2_MOE_CONFIG = {  # config.json as MiniMind2's MiniMindConfig (transformers PretrainedConfig) writes it
    "architectures": ["MiniMindForCausalLM"], "model_type": "minimind", "torch_dtype": "float32",
    "transformers_version": "4.51.3", "dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2, "flash_attn": True,
    "hidden_act": "silu", "hidden_size": 640, "intermediate_size": 1728, "max_position_embeddings": 32768,
    "num_attention_heads": 8, "num_hidden_layers": 8, "num_key_value_heads": 2, "vocab_size": 6400,
    "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "use_moe": True, "num_experts_per_tok": 2,
    "n_routed_experts": 4, "n_shared_experts": 1, "scoring_func": "softmax", "aux_loss_alpha": 0.1,
    "seq_aux": True, "norm_topk_prob": True}


def minimind2_state_shapes(c):
    "Names and shapes of a MiniMind2(-MoE) `state_dict()` (its released .pth), from MiniMind2's module layout."
    H, I, hd = c["hidden_size"], c["intermediate_size"], c["hidden_size"] // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * hd
    ffn = lambda p: {f"{p}.gate_proj.weight": (I, H), f"{p}.up_proj.weight": (I, H), f"{p}.down_proj.weight": (H, I)}
    shapes = {"model.embed_tokens.weight": (c["vocab_size"], H), "model.norm.weight": (H,),
              "lm_head.weight": (c["vocab_size"], H)}
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}"
        shapes.update({f"{p}.self_attn.q_proj.weight": (H, H), f"{p}.self_attn.k_proj.weight": (kv, H),
                       f"{p}.self_attn.v_proj.weight": (kv, H), f"{p}.self_attn.o_proj.weight": (H, H),
                       f"{p}.input_layernorm.weight": (H,), f"{p}.post_attention_layernorm.weight": (H,)})
        if not c["use_moe"]: shapes.update(ffn(f"{p}.mlp")); continue
        shapes[f"{p}.mlp.gate.weight"] = (c["n_routed_experts"], H)
        for e in range(c["n_routed_experts"]): shapes.update(ffn(f"{p}.mlp.experts.{e}"))
        for e in range(c["n_shared_experts"]): shapes.update(ffn(f"{p}.mlp.shared_experts.{e}"))
    return shapes


def test_minimind2_config_json_loads(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(MINIMIND2_MOE_CONFIG))
    cfg = MiniMindConfig.load(tmp_path)
    for k in ["hidden_size", "num_hidden_layers", "num_key_value_heads", "intermediate_size", "use_moe",
              "n_routed_experts", "n_shared_experts", "num_experts_per_tok", "scoring_func", "aux_loss_alpha",
              "seq_aux", "norm_topk_prob"]:
        assert getattr(cfg, k) == MINIMIND2_MOE_CONFIG[k], k
    m = on_meta(cfg)
    shapes = minimind2_state_shapes(MINIMIND2_MOE_CONFIG)
    m.load_state_dict({k: torch.empty(s, device="meta") for k, s in shapes.items()}, strict=True)


def test_strict_load_minimind2_names():
    "A MiniMind2-MoE-named checkpoint (small sizes, real tensors) loads strictly and is used as loaded."
    c = {**MINIMIND2_MOE_CONFIG, "hidden_size": 32, "intermediate_size": 96, "num_attention_heads": 4,
         "num_hidden_layers": 2, "vocab_size": 128}
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=g) * 0.1 for k, s in minimind2_state_shapes(c).items()}
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"]          # tied, as MiniMind2 saves it
    m = MiniMindForCausalLM(MiniMindConfig.from_dict(c))   # from_dict skips MiniMind2's bookkeeping keys
    m.load_state_dict(sd, strict=True)
    layer = m.model.layers[1].mlp
    assert torch.equal(layer.gate.weight, sd["model.layers.1.mlp.gate.weight"])
    assert torch.equal(layer.experts[3].down_proj.weight, sd["model.layers.1.mlp.experts.3.down_proj.weight"])
    assert torch.equal(layer.shared_experts[0].up_proj.weight, sd["model.layers.1.mlp.shared_experts.0.up_proj.weight"])
    x = torch.randn(2, 5, 32)
    with torch.no_grad(): torch.testing.assert_close(layer.eval()(x), minimind2_moe_forward(layer, x))


def test_routing_tools():
    torch.manual_seed(0)
    m = MiniMindForCausalLM(tiny_cfg())
    rs = capture_routing(m, torch.randint(0, 128, (2, 12)))
    assert len(rs) == 2 and rs[0].scores.shape == (24, 4)
    load = expert_load(rs)
    torch.testing.assert_close(load.sum(-1), torch.ones(2))
    assert torch.all((load_entropy(load) > 0) & (load_entropy(load) <= 1 + 1e-6))
    assert load_entropy(torch.tensor([[0.25] * 4])).item() == pytest.approx(1.0)
    assert m.training  # capture_routing restores the mode


def test_tiny_moe_trains():
    "A tiny MoE trains with LM loss + aux loss; its loss falls."
    torch.manual_seed(0)
    m = MiniMindForCausalLM(tiny_cfg())
    ids = torch.randint(0, 128, (4, 16))      # one fixed batch: the loss must fall when memorising it
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        out = m(ids, labels=ids)
        (out.loss + out.aux_loss).backward()
        opt.step(); opt.zero_grad()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


def test_moe_trains_through_the_trainer():
    "The one trainer of 03_pretrain trains an MoE as it trains a dense model, with the aux loss in its loss."
    train = pytest.importorskip("minimind.train")
    import numpy as np
    torch.manual_seed(0)
    m = MiniMindForCausalLM(tiny_cfg())
    data = train.PackedDataset(np.tile(np.arange(3, 40), 60), seq_len=16)   # a repeating pattern: learnable
    batch = data.get_batch([0, 1])
    loss, metrics = train.causal_lm_loss(m, batch)
    assert metrics["aux"] > 0 and torch.allclose(loss.detach(), metrics["ce"] + metrics["aux"])
    cfg = train.TrainConfig(max_steps=20, batch_size=4, lr=3e-3, warmup_steps=0, device="cpu", eval_every=0,
                            ckpt_every=0, progress=False, live_plot=False, run_dir=None)
    t = train.Trainer(m, data, cfg=cfg).fit()
    losses = [r["loss"] for r in t.history]
    assert len(losses) == 20 and losses[-1] < losses[0] - 0.5, losses


def test_from_pretrained_minimind2_pth(tmp_path):
    "A folder as a MiniMind2-MoE user has it (config.json + a torch.save'd state dict) opens with from_pretrained."
    c = {**MINIMIND2_MOE_CONFIG, "hidden_size": 32, "intermediate_size": 96, "num_attention_heads": 4,
         "num_hidden_layers": 2, "vocab_size": 128}
    g = torch.Generator().manual_seed(1)
    sd = {k: torch.randn(s, generator=g) * 0.1 for k, s in minimind2_state_shapes(c).items()}
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    (tmp_path / "config.json").write_text(json.dumps(c))
    torch.save(sd, tmp_path / "pretrain_32_moe.pth")
    m = MiniMindForCausalLM.from_pretrained(tmp_path)
    assert m.config.use_moe and m.config.aux_loss_alpha == 0.1 and not m.training
    assert torch.equal(m.model.layers[0].mlp.gate.weight, sd["model.layers.0.mlp.gate.weight"])
    out = m(torch.randint(0, 128, (1, 6)))
    assert out.logits.shape == (1, 6, 128) and out.aux_loss.item() == 0
