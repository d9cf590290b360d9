"""Training throughput of minimind.train.Trainer, variants stepped alternately in one run (prints a table; not a timed test).

  ours (packed)          MiniMindForCausalLM on packed pretraining rows (no padding)
  MiniMind-style padded  the same model and trainer, one document per row padded to --seq-len
  transformers Llama     transformers.LlamaForCausalLM of the same config on the same packed rows, same trainer
  SFT packed             notebook 04's SFTDataset: conversations packed, block-diagonal mask, restarting positions
  SFT padded             the same conversations one per row, padded to --seq-len (MiniMind's SFT layout)

Variants are stepped in turn, ABBA order (A B C ... C B A, repeated), after warm-up steps, so that load from other
processes on a shared machine falls on all of them alike; a 1024^3 fp32 matmul is timed between rounds as the
reference. Each "x" column is the median over rounds of the per-round ratio, with its min-max spread: ratios within
+-3% are parity. Useful tokens/s counts only targets that train (not padding, not prompt tokens in SFT).

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


def trainer_for(model, data, args, dev):
    return Trainer(model, data, cfg=TrainConfig(max_steps=10 ** 6, batch_size=args.batch_size, lr=1e-4, warmup_steps=0, device=str(dev),
                                                progress=False, live_plot=False, eval_every=0, ckpt_every=0, compile=args.compile))


def step(t, dev):
    "One optimizer step: (seconds, trained tokens)."
    r = t.train_step()
    if dev.type == "cuda": torch.cuda.synchronize()
    return r["dt"], r["tokens"]


def spread(xs): return f"{np.median(xs):.2f}x ({min(xs):.2f}-{max(xs):.2f})"


def bench(preset, args, dev):
    cfg = MiniMindConfig.from_preset(PRESETS[preset], max_position_embeddings=max(512, args.seq_len))
    L, d, T, V = cfg.num_hidden_layers, cfg.hidden_size, args.seq_len, cfg.vocab_size
    pre = hq_like_lengths(max(4096, 64 * args.batch_size), T)     # padded batches draw from these; packed rows hold the same tokens
    conv = sft_like_lengths(max(4096, 64 * args.batch_size), T)
    make = lambda: MiniMindForCausalLM(cfg)
    variants = [("ours (packed)", make, packed_rows(pre, T, V)), ("MiniMind-style padded", make, PaddedRows(pre, T, V))]
    if dev.type == "cpu" or args.all: variants.append(("transformers Llama (packed)", lambda: hf_llama(cfg), packed_rows(pre, T, V)))
    sft = sft_data(conv, V)
    variants += [("SFT packed (block-diagonal)", make, SFTDataset(sft, T)), ("SFT padded (MiniMind)", make, SFTDataset(sft, T, pack=False))]
    peak_name, ref = ("bf16 matmul", lambda: matmul_gflops(dev, torch.bfloat16, 8192, 10)) if dev.type == "cuda" else ("fp32 matmul", lambda: matmul_gflops(dev, torch.float32, 1024, 5))
    trainers = []
    for name, mk, data in variants:
        torch.manual_seed(0); t = trainer_for(mk(), data, args, dev); t.model.train()
        for _ in range(args.warmup): step(t, dev)
        trainers.append((name, t, data))
    order = list(range(len(trainers)))
    times = {i: [] for i in order}; toks = {i: [] for i in order}; peaks = []
    for r in range(args.rounds):
        peaks.append(ref())
        for i in (order if r % 2 == 0 else order[::-1]):                                  # A B C ... then ... C B A
            dt, n = step(trainers[i][1], dev); times[i].append(dt); toks[i].append(n)
    peak = float(np.median(peaks))
    tps = {i: np.array(toks[i]) / np.array(times[i]) for i in order}
    n_params = {i: sum(p.numel() for p in trainers[i][1].model.parameters()) for i in order}
    print(f"\n{preset} ({PRESETS[preset]}), {dev}, batch {args.batch_size} x {T}, {torch.get_num_threads()} threads, {args.rounds} rounds ABBA; "
          f"{peak_name}: {peak:,.0f} GFLOP/s (min-max {min(peaks):,.0f}-{max(peaks):,.0f}); documents: mean {pre.mean():.0f}, conversations: mean {conv.mean():.0f} of {T} tokens")
    print(f"| {'variant':28s} | params | trained share | useful tok/s | ours is x faster (spread) | achieved GFLOP/s | of {peak_name} |")
    print("|---|---|---|---|---|---|---|")
    for i in order:
        name, t, data = trainers[i]
        base = 0 if i < 3 else 3                                                        # pretraining rows vs ours; SFT rows vs packed SFT
        ratio = spread(list(tps[base] / tps[i])) if i != base else "1.00x"
        share = np.mean(toks[i]) / (args.batch_size * T)
        done = args.batch_size * T * (6 * n_params[i] + 12 * L * d * T) / np.median(times[i]) / 1e9  # work done, padding included
        print(f"| {name:28s} | {n_params[i] / 1e6:.1f}M | {share:.0%} | {np.median(tps[i]):,.0f} | {ratio} | {done:,.1f} | {done / peak:.0%} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", nargs="*", default=None, help="tiny | 26m | 104m (default: 26m on CPU, 26m and 104m on CUDA)")
    p.add_argument("--rounds", type=int, default=4, help="timed ABBA rounds (each variant steps once per round)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=None, help="default: 8 on CPU, 32 on CUDA")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--all", action="store_true", help="on CUDA also run the transformers variant")
    args = p.parse_args()
    dev = get_device(args.device)
    if args.threads: torch.set_num_threads(args.threads)
    args.batch_size = args.batch_size or (32 if dev.type == "cuda" else 8)
    for preset in args.preset or (["26m", "104m"] if dev.type == "cuda" else ["26m"]): bench(preset, args, dev)


if __name__ == "__main__":
    main()
