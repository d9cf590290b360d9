"""Benchmark MiniMind's MoE: training step time and tokens/s of an MoE preset vs a dense model with the same
active parameters, and grouped dispatch vs the per-token loop reference.

    python bench/bench_moe.py                                   # MiniMind2-MoE at full width, small batch, CPU
    python bench/bench_moe.py --hidden-size 256 --num-layers 2  # a quick CPU check
    python bench/bench_moe.py --device cuda --batch-size 16 --seq-len 512

On a CPU shared with other jobs, `--threads 1` gives steadier numbers than torch's default thread pool.
"""
import argparse, math, platform, time
import torch, torch.nn as nn
from minimind.model import MiniMindConfig, MiniMindForCausalLM, FeedForward
from minimind.moe import MoEGate, dispatch, moe_loop_reference, active_params


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="minimind2-moe", help="an MoE preset of MiniMindConfig.from_preset")
    p.add_argument("--hidden-size", type=int, default=None, help="override the preset's hidden size")
    p.add_argument("--num-layers", type=int, default=None, help="override the preset's number of layers")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="timed training steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--dispatch-tokens", type=int, default=256, help="tokens in the dispatch-vs-loop comparison")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def sync(device):
    "Wait for queued GPU work so wall-clock timings are honest."
    if device.type == "cuda": torch.cuda.synchronize(device)


def configs(args):
    "The MoE config and a dense config whose FFN width equals the MoE's active experts (shared + top-k)."
    over = {k: v for k, v in {"hidden_size": args.hidden_size, "num_hidden_layers": args.num_layers}.items() if v}
    moe = MiniMindConfig.from_preset(args.preset, **over)
    if not moe.use_moe: raise SystemExit(f"--preset {args.preset!r} is dense; pick an MoE preset (e.g. minimind2-moe)")
    width = (moe.num_experts_per_tok + moe.n_shared_experts) * moe.intermediate_size
    dense = MiniMindConfig.from_preset(args.preset, **over, use_moe=False, intermediate_size=width)
    return moe, dense


def time_training(cfg, args, device):
    "Median seconds per AdamW training step (forward, LM + aux loss, backward, update)."
    torch.manual_seed(args.seed)
    model = MiniMindForCausalLM(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, cfg.vocab_size, (args.batch_size, args.seq_len), device=device)
    times = []
    for i in range(args.warmup + args.steps):
        sync(device); t0 = time.perf_counter()
        out = model(ids, labels=ids)
        (out.loss + out.aux_loss).backward()
        opt.step(); opt.zero_grad(set_to_none=True)
        sync(device); times.append(time.perf_counter() - t0)
    total, active = sum(p.numel() for p in model.parameters()), active_params(model)
    del model, opt
    return sorted(times[args.warmup:])[args.steps // 2], total, active


def time_dispatch(cfg, args, device):
    "Median seconds of one MoE layer's routed part, forward + backward, with each dispatch."
    torch.manual_seed(args.seed)
    gate = MoEGate(cfg).to(device)
    experts = nn.ModuleList([FeedForward(cfg) for _ in range(cfg.n_routed_experts)]).to(device)
    x = torch.randn(1, args.dispatch_tokens, cfg.hidden_size, device=device)
    res = {}
    for fn, reps in ((dispatch, 5), (moe_loop_reference, 1)):
        times = []
        for _ in range(1 + reps):
            sync(device); t0 = time.perf_counter()
            r = gate(x)
            fn(x[0], r.topk_idx, r.topk_weight, experts).sum().backward()
            sync(device); times.append(time.perf_counter() - t0)
        res[fn.__name__] = sorted(times[1:])[reps // 2]
    return res


def main(argv=None):
    args = parse_args(argv)
    if args.threads: torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    moe, dense = configs(args)
    ntok = args.batch_size * args.seq_len
    print(f"# MoE benchmark: {args.preset} (hidden {moe.hidden_size}, {moe.num_hidden_layers} layers, "
          f"{moe.n_routed_experts} routed + {moe.n_shared_experts} shared, top-{moe.num_experts_per_tok}); "
          f"batch {args.batch_size}×{args.seq_len}; device {device}"
          f"{'' if device.type != 'cpu' else f' ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})'}; "
          f"torch {torch.__version__}\n")
    rows = []
    for name, cfg in ((f"MoE ({args.preset})", moe), (f"dense, FFN width {dense.intermediate_size} (same active)", dense)):
        t, total, active = time_training(cfg, args, device)
        rows.append((name, total, active, t))
    print("| model | total params | active params | step time (s) | tokens/s |")
    print("|---|---|---|---|---|")
    for name, total, active, t in rows:
        print(f"| {name} | {total:,} | {active:,} | {t:.3f} | {ntok / t:,.0f} |")
    d = time_dispatch(moe, args, device)
    n = args.dispatch_tokens
    print(f"\n| routed experts of one layer, {n} tokens, fwd+bwd | time (s) | tokens/s | speed-up |")
    print("|---|---|---|---|")
    for name, t in d.items():
        print(f"| `{name}` | {t:.4f} | {n / t:,.0f} | {d['moe_loop_reference'] / t:.1f}× |")


if __name__ == "__main__":
    main()
