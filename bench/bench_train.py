"""Training throughput of minimind.train.Trainer, side by side in one run (prints a table; not a timed test).

  ours     MiniMindForCausalLM on packed rows (no padding)
  padded   the same model and trainer on MiniMind-style batches: every document padded to --seq-len
  hf-llama transformers.LlamaForCausalLM of the same config on the same packed rows, same trainer

Useful tokens/s counts only non-padding targets. Achieved GFLOP/s uses 6N + 12*L*d*T FLOPs per token (N: all
parameters, tied embedding counted once; the second term is attention's QK^T and AV, PaLM appendix B), and is
compared with a plain fp32 (CPU) or bf16 (CUDA) matmul measured in the same run.

  .venv/bin/python bench/bench_train.py                      # CPU, 26M (MiniMind2-small), a few steps
  .venv/bin/python bench/bench_train.py --preset tiny --steps 3
  .venv/bin/python bench/bench_train.py --device cuda        # 26M and 104M, tokens/s and MFU

The padded variant's useful share is sampled (8 documents per row batch): use --steps 20 or more for a stable
ratio; its expectation is 306/512, so ours is about 512/306 = 1.67x faster at equal hardware throughput.
"""
import argparse, os, time

import numpy as np
import torch

from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.train import PackedDataset, TrainConfig, Trainer, get_device

PRESETS = {"tiny": "tiny", "26m": "minimind2-small", "104m": "minimind2"}


def hq_like_lengths(n, max_len, seed=0):
    "Document lengths shaped like pretrain_hq's: clipped at max_len, mean about 0.6 * max_len (306 of 512)."
    rng = np.random.default_rng(seed)
    return np.clip(rng.gamma(4.0, 80.0 * max_len / 512, n), 16, max_len).astype(int)


class PaddedRows:
    "MiniMind-style batches: one document per row, padded to seq_len, padding masked out of the loss."
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


def time_training(model, data, args, dev):
    "Mean seconds and useful tokens per step over --steps timed steps after --warmup (useful/s = total useful / total time)."
    t = Trainer(model, data, cfg=TrainConfig(max_steps=10 ** 6, batch_size=args.batch_size, lr=1e-4, warmup_steps=0,
                                             device=str(dev), progress=False, live_plot=False, eval_every=0, ckpt_every=0,
                                             compile=args.compile))
    model.train()
    recs = []
    for i in range(args.warmup + args.steps):
        r = t.train_step()
        if dev.type == "cuda": torch.cuda.synchronize()
        if i >= args.warmup: recs.append(r)
    return float(np.mean([r["dt"] for r in recs])), float(np.mean([r["tokens"] for r in recs]))  # totals over the timed steps


def bench(preset, args, dev):
    cfg = MiniMindConfig.from_preset(PRESETS[preset], max_position_embeddings=max(512, args.seq_len))
    L, d, T = cfg.num_hidden_layers, cfg.hidden_size, args.seq_len
    lengths = hq_like_lengths(max(4096, 64 * args.batch_size), T)  # padded batches draw from these; packed rows hold the same tokens
    variants = [("ours (packed)", lambda: MiniMindForCausalLM(cfg), packed_rows(lengths, T, cfg.vocab_size))]
    if dev.type == "cpu" or args.all:
        variants += [("MiniMind-style padded", lambda: MiniMindForCausalLM(cfg), PaddedRows(lengths, T, cfg.vocab_size)),
                     ("transformers Llama (packed)", lambda: hf_llama(cfg), packed_rows(lengths, T, cfg.vocab_size))]
    if dev.type == "cuda": peak = matmul_gflops(dev, torch.bfloat16, 8192, 20); peak_name = "bf16 matmul"
    else: peak = matmul_gflops(dev, torch.float32, 1024, 10); peak_name = "fp32 matmul"
    rows, base = [], None
    for name, make, data in variants:
        torch.manual_seed(0); model = make()
        n = sum(p.numel() for p in model.parameters())
        flops_per_tok = 6 * n + 12 * L * d * T
        dt, useful = time_training(model, data, args, dev)
        tps = useful / dt
        base = base or tps
        # GFLOP/s of the work the hardware actually did (padding included): all positions of every row
        done = args.batch_size * T * flops_per_tok / dt / 1e9
        rows.append((name, n, useful / (args.batch_size * T), tps, base / tps, done, done / peak))
        del model
        if dev.type == "cuda": torch.cuda.empty_cache()
    print(f"\n{preset} ({PRESETS[preset]}), {dev}, batch {args.batch_size} x {T}, {torch.get_num_threads()} threads; "
          f"{peak_name}: {peak:,.0f} GFLOP/s; documents: mean {lengths.mean():.0f} of {T} tokens")
    print(f"| {'variant':28s} | params | useful share | useful tok/s | ours is x faster | achieved GFLOP/s | of {peak_name} |")
    print("|---|---|---|---|---|---|---|")
    for name, n, share, tps, speed, done, frac in rows:
        print(f"| {name:28s} | {n / 1e6:.1f}M | {share:.0%} | {tps:,.0f} | {speed:.2f}x | {done:,.1f} | {frac:.0%} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", nargs="*", default=None, help="tiny | 26m | 104m (default: 26m on CPU, 26m and 104m on CUDA)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=None, help="default: 8 on CPU, 32 on CUDA")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--all", action="store_true", help="on CUDA also run the padded and transformers variants")
    args = p.parse_args()
    dev = get_device(args.device)
    if args.threads: torch.set_num_threads(args.threads)
    args.batch_size = args.batch_size or (32 if dev.type == "cuda" else 8)
    for preset in args.preset or (["26m", "104m"] if dev.type == "cuda" else ["26m"]): bench(preset, args, dev)


if __name__ == "__main__":
    main()
