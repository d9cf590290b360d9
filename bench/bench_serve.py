"""The server under load: time to first token and tokens/s for 1 and 8 simultaneous streaming clients (prints a
table; not a timed test). Decode speed at batch 1 (ours vs transformers vs llama.cpp) is bench/bench_decode.py.

`minimind.serve` runs on loopback in a thread; `load_test` fires k streaming requests at once, each for exactly
`--new-tokens` tokens (`ignore_eos`), and records per request the time to its first text and the total; the
engine serves one generation at a time, so TTFT grows with k while the total tokens/s stays that of one stream.
Rounds alternate the order of the client counts (load from other jobs falls on all of them); the table gives the
median and the range. The weights are random (seeded): speed does not depend on what they say.

  .venv/bin/python bench/bench_serve.py                          # MiniMind2-small on CPU, 1 and 8 clients
  .venv/bin/python bench/bench_serve.py --threads 1 --rounds 7   # on a busy shared machine
  .venv/bin/python bench/bench_serve.py --preset tiny --rounds 2 --new-tokens 32 --clients 1,4,16
"""
import argparse, os, statistics, time

import torch


def spread(xs, fmt="{:.1f}"):
    "median [min-max] of a list"
    return f"{fmt.format(statistics.median(xs))} [{fmt.format(min(xs))}-{fmt.format(max(xs))}]"


def bench_server(model, tok, rounds, clients, new_tokens):
    "Rounds of k simultaneous streaming clients for each k in `clients`, alternated; per k the TTFT and tokens/s lists."
    from minimind.serve import Engine, load_test, make_app, serve_in_thread
    engine = Engine(model, tok)
    out = {k: {"ttft_mean": [], "ttft_worst": [], "tok_s": []} for k in clients}
    with serve_in_thread(make_app(engine)) as url:
        load_test(url, 2, 8)  # warm up
        for r in range(rounds):
            for k in (clients if r % 2 == 0 else clients[::-1]):
                t0 = time.perf_counter(); res = load_test(url, k, new_tokens); wall = time.perf_counter() - t0
                assert all(n == new_tokens for _, _, n in res), "a reply was cut short"
                out[k]["ttft_mean"].append(1000 * statistics.mean(f for f, _, _ in res))
                out[k]["ttft_worst"].append(1000 * max(f for f, _, _ in res))
                out[k]["tok_s"].append(sum(n for _, _, n in res) / wall)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="minimind2-small", help="a MiniMindConfig preset")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=100, help="tokens per reply")
    p.add_argument("--clients", default="1,8", help="simultaneous clients, comma-separated")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = p.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    from minimind.model import MiniMindConfig, MiniMindForCausalLM
    from minimind.tokenizer import load_tokenizer
    torch.manual_seed(0)
    model = MiniMindForCausalLM(MiniMindConfig.from_preset(a.preset)).eval()
    print(f"{a.preset}: {model.num_params() / 1e6:.1f}M parameters, CPU fp32, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, {a.rounds} rounds alternated; load average {os.getloadavg()[0]:.1f}")
    clients = [int(c) for c in a.clients.split(",")]
    out = bench_server(model, load_tokenizer(), a.rounds, clients, a.new_tokens)
    print(f"\nserver: streaming clients at once, {a.new_tokens} tokens each, one generation at a time, median [min-max] of {a.rounds} rounds")
    print("| clients | mean TTFT (ms) | worst TTFT (ms) | tokens/s, all clients |\n|---|---|---|---|")
    for k, v in out.items():
        print(f"| {k} | {spread(v['ttft_mean'], '{:.0f}')} | {spread(v['ttft_worst'], '{:.0f}')} | {spread(v['tok_s'])} |")


if __name__ == "__main__":
    main()
