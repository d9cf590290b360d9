"""Training throughput of minimind.train.Trainer, variants stepped alternately in one run (prints a table; not a timed test).

  ours (packed)          MiniMindForCausalLM on packed pretraining rows (no padding)
  MiniMind-style padded  the same model and trainer, one document per row padded to --seq-len
  transformers Llama     transformers.LlamaForCausalLM of the same config on the same packed rows, same trainer
  SFT packed             notebook 04's SFTDataset: conversations packed, block-diagonal mask, restarting positions
  SFT padded             the same conversations one per row, padded to --seq-len (MiniMind's SFT layout)

Variants are stepped in turn, ABBA order (A B C ... C B A, repeated), after warm-up steps, so that load from other
processes on a shared machine falls on all of them alike; a matmul (1024^3 fp32 on CPU, 8192^3 bf16 on CUDA) is timed
between rounds as the reference. Each "x" column is the median over rounds of the per-round ratio, with its min-max
spread: ratios within +-3% are parity. Useful tokens/s counts only targets that train (not padding, not prompt tokens
in SFT). bench/gpu_check.py measures the same variants, eager and compiled, as part 2 of its report.

  .venv/bin/python bench/bench_train.py                      # CPU, 26M (MiniMind2-small)
  .venv/bin/python bench/bench_train.py --preset tiny --rounds 3
  .venv/bin/python bench/bench_train.py --device cuda        # 26M and 104M, tokens/s and MFU
"""
import argparse, time

import numpy as np
import torch

from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.sft import SFTData, SFTDataset
from minimind.train import PackedDataset, TrainConfig, Trainer, get_device

PRESETS = {"tiny": "tiny", "26m": "minimind2-small", "104m": "minimind2"}
# name -> (model, rows): the variants this benchmark knows; "ours (packed)" and "SFT packed" are the bases of their groups
VARIANTS = {"ours (packed)": ("ours", "packed"), "MiniMind-style padded": ("ours", "padded"),
            "transformers Llama (packed)": ("hf", "packed"), "SFT packed (block-diagonal)": ("ours", "sft_packed"),
            "SFT padded (MiniMind)": ("ours", "sft_padded")}
BASES = {"pretrain": "ours (packed)", "sft": "SFT packed (block-diagonal)"}


def hq_like_lengths(n, max_len, seed=0):
    "Document lengths shaped like pretrain_hq's: clipped at max_len, mean about 0.6 * max_len (306 of 512)."
    rng = np.random.default_rng(seed)
    return np.clip(rng.gamma(4.0, 80.0 * max_len / 512, n), 16, max_len).astype(int)


def sft_like_lengths(n, max_len, seed=1):
    "Conversation lengths shaped like sft_mini_512's (an assumption: mean about 200 tokens, long tail, cut at max_len)."
    rng = np.random.default_rng(seed)
    return np.clip(rng.gamma(2.0, 100.0 * max_len / 512, n), 24, max_len + 1).astype(int)


class PaddedRows:
    "MiniMind-style pretraining batches: one document per row, padded to seq_len, padding masked out of the loss."
    def __init__(self, lengths, seq_len, vocab, seed=0):
        rng = np.random.default_rng(seed)
        self.ids = torch.zeros(len(lengths), seq_len + 1, dtype=torch.long)
        for i, n in enumerate(lengths): self.ids[i, :n] = torch.from_numpy(rng.integers(3, vocab, n))
        self.mask = torch.arange(seq_len + 1)[None] < torch.as_tensor(lengths)[:, None]
    def __len__(self): return len(self.ids)
    def get_batch(self, idx):
        x, m = self.ids[idx], self.mask[idx]
        return {"input_ids": x[:, :-1], "labels": x[:, 1:].masked_fill(~m[:, 1:], -100)}


def packed_rows(lengths, seq_len, vocab, seed=0):
    rng = np.random.default_rng(seed)
    return PackedDataset(rng.integers(3, vocab, int(lengths.sum()) + 1).astype(np.uint16), seq_len)


def sft_data(lengths, vocab, seed=2):
    "Random conversations of the given lengths: the first 30% of each is prompt (not trained), the rest reply."
    rng = np.random.default_rng(seed)
    toks = rng.integers(3, vocab, int(lengths.sum())).astype(np.uint16)
    trained = np.concatenate([np.arange(n) >= int(0.3 * n) for n in lengths])
    return SFTData(toks, trained, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), {})


def hf_llama(cfg: MiniMindConfig):
    from transformers import LlamaConfig, LlamaForCausalLM
    hc = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                     num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                     num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=cfg.max_position_embeddings,
                     rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps, tie_word_embeddings=cfg.tie_word_embeddings,
                     attn_implementation="sdpa")
    return LlamaForCausalLM(hc)


def matmul_gflops(dev, dtype, n, reps):
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    for _ in range(2): a @ b
    if dev.type == "cuda": torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps): a @ b
    if dev.type == "cuda": torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def peak_reference(dev):
    "(name, GFLOP/s function): the matmul whose rate MFU is measured against: bf16 on CUDA, fp32 on a CPU."
    if dev.type == "cuda": return "bf16 matmul", lambda: matmul_gflops(dev, torch.bfloat16, 8192, 10)
    return "fp32 matmul", lambda: matmul_gflops(dev, torch.float32, 1024, 5)


def trainer_for(model, data, batch_size, dev, compile=False):
    return Trainer(model, data, cfg=TrainConfig(max_steps=10 ** 6, batch_size=batch_size, lr=1e-4, warmup_steps=0, device=str(dev),
                                                progress=False, live_plot=False, eval_every=0, ckpt_every=0, compile=compile))


def step(t, dev):
    "One optimizer step: (seconds, trained tokens)."
    r = t.train_step()                      # reads its numbers back: the step has finished on the device
    if dev.type == "cuda": torch.cuda.synchronize()
    return r["dt"], r["tokens"]


def measure(preset, dev, batch_size, seq_len, rounds, warmup, names=tuple(VARIANTS), compiled=(), backend="inductor", log=print):
    """Step the variants `names` (and `compiled`, the same under torch.compile) alternately; one dict per variant.

    Each has: name, group, compiled, params, share (trained share of row positions), useful_tok_s and positions_s
    (medians), vs_base (this / its group's eager base, per round: median, min, max), vs_eager (compiled / eager),
    gflops (work done, padding included), mfu (of the reference matmul), peak_mib (CUDA: its own model, optimizer
    and activations), warmup_s (compile time included)."""
    cfg = MiniMindConfig.from_preset(PRESETS.get(preset, preset), max_position_embeddings=max(512, seq_len))
    L, d, T, V = cfg.num_hidden_layers, cfg.hidden_size, seq_len, cfg.vocab_size
    pre = hq_like_lengths(max(4096, 64 * batch_size), T)   # padded batches draw from these; packed rows hold the same tokens
    conv = sft_like_lengths(max(4096, 64 * batch_size), T)
    sft = sft_data(conv, V)
    rows = {"packed": lambda: packed_rows(pre, T, V), "padded": lambda: PaddedRows(pre, T, V),
            "sft_packed": lambda: SFTDataset(sft, T), "sft_padded": lambda: SFTDataset(sft, T, pack=False)}
    models = {"ours": lambda: MiniMindForCausalLM(cfg), "hf": lambda: hf_llama(cfg)}
    specs = [(n, False) for n in names] + [(n, True) for n in compiled]
    peak_name, ref = peak_reference(dev)
    ts = []
    for name, comp in specs:
        m, r = VARIANTS[name]
        if dev.type == "cuda": torch.cuda.synchronize(); base_mem = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
        torch.manual_seed(0); t = trainer_for(models[m](), rows[r](), batch_size, dev, backend if comp else False); t.model.train()
        t0 = time.perf_counter()
        for _ in range(warmup + (2 if comp else 0)): step(t, dev)       # compiled: two more, for the recompiles of the first steps
        warm = time.perf_counter() - t0
        mib = (torch.cuda.max_memory_allocated() - base_mem) / 2 ** 20 if dev.type == "cuda" else float("nan")
        ts.append(dict(name=name, group="sft" if r.startswith("sft") else "pretrain", compiled=comp, trainer=t, warmup_s=warm, peak_mib=mib))
        log(f"  warmed up {name}{' (compiled)' if comp else ''} in {warm:.1f} s")
    times, toks, peaks = [[] for _ in ts], [[] for _ in ts], []
    order = list(range(len(ts)))
    for k in range(rounds):
        peaks.append(ref())
        for i in (order if k % 2 == 0 else order[::-1]):                                # A B C ... then ... C B A
            dt, n = step(ts[i]["trainer"], dev); times[i].append(dt); toks[i].append(n)
    peak = float(np.median(peaks))
    tps = [np.array(n) / np.array(t) for n, t in zip(toks, times)]
    index = {(v["name"], v["compiled"]): i for i, v in enumerate(ts)}
    out = []
    for i, v in enumerate(ts):
        n_params = sum(p.numel() for p in v["trainer"].model.parameters())
        base = index.get((BASES[v["group"]], False), index.get((BASES[v["group"]], True), i))
        eager = index.get((v["name"], False))
        dt = float(np.median(times[i]))
        done = batch_size * T * (6 * n_params + 12 * L * d * T) / dt / 1e9                # work done, padding included
        ratio = tps[i] / tps[base]
        out.append(dict(name=v["name"], group=v["group"], compiled=v["compiled"], params=n_params, share=float(np.mean(toks[i])) / (batch_size * T),
                        useful_tok_s=float(np.median(tps[i])), positions_s=float(np.median(batch_size * T / np.array(times[i]))), vs_base=(float(np.median(ratio)), float(ratio.min()), float(ratio.max())),
                        vs_eager=(tuple(float(f(tps[i] / tps[eager])) for f in (np.median, np.min, np.max)) if v["compiled"] and eager is not None else None),
                        gflops=done, mfu=done / peak, peak_mib=v["peak_mib"], warmup_s=v["warmup_s"]))
        del v["trainer"]
    if dev.type == "cuda": torch.cuda.empty_cache()
    return {"preset": preset, "model": PRESETS.get(preset, preset), "batch_size": batch_size, "seq_len": T, "rounds": rounds,
            "peak_name": peak_name, "peak_gflops": peak, "peak_spread": (min(peaks), max(peaks)), "doc_mean": float(pre.mean()),
            "conv_mean": float(conv.mean()), "threads": torch.get_num_threads(), "rows": out}


def spread(r): return f"{r[0]:.2f}x ({r[1]:.2f}-{r[2]:.2f})"


def print_table(res, dev):
    print(f"\n{res['preset']} ({res['model']}), {dev}, batch {res['batch_size']} x {res['seq_len']}, {res['threads']} threads, {res['rounds']} rounds ABBA; "
          f"{res['peak_name']}: {res['peak_gflops']:,.0f} GFLOP/s (min-max {res['peak_spread'][0]:,.0f}-{res['peak_spread'][1]:,.0f}); "
          f"documents: mean {res['doc_mean']:.0f}, conversations: mean {res['conv_mean']:.0f} of {res['seq_len']} tokens")
    print(f"| {'variant':28s} | params | trained share | useful tok/s | ours is x faster (spread) | achieved GFLOP/s | of {res['peak_name']} |")
    print("|---|---|---|---|---|---|---|")
    for r in res["rows"]:
        inv = (1 / r["vs_base"][0], 1 / r["vs_base"][2], 1 / r["vs_base"][1])           # base / this, per round
        ratio = "1.00x" if r["name"] == BASES[r["group"]] else spread(inv)
        print(f"| {r['name']:28s} | {r['params'] / 1e6:.1f}M | {r['share']:.0%} | {r['useful_tok_s']:,.0f} | {ratio} | {r['gflops']:,.1f} | {r['mfu']:.0%} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", nargs="*", default=None, help="tiny | 26m | 104m (default: 26m on CPU, 26m and 104m on CUDA)")
    p.add_argument("--rounds", type=int, default=4, help="timed ABBA rounds (each variant steps once per round)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=None, help="default: 8 on CPU, 32 on CUDA")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--compile", action="store_true", help="torch.compile every variant")
    p.add_argument("--all", action="store_true", help="on CUDA also run the transformers variant")
    args = p.parse_args()
    dev = get_device(args.device)
    if args.threads: torch.set_num_threads(args.threads)
    bs = args.batch_size or (32 if dev.type == "cuda" else 8)
    names = [n for n in VARIANTS if n != "transformers Llama (packed)" or dev.type == "cpu" or args.all]
    for preset in args.preset or (["26m", "104m"] if dev.type == "cuda" else ["26m"]):
        res = measure(preset, dev, bs, args.seq_len, args.rounds, args.warmup, names=() if args.compile else names,
                      compiled=names if args.compile else (), log=lambda s: None)
        print_table(res, dev)


if __name__ == "__main__":
    main()
