"""Decode speed and serving latency, side by side in one run (prints tables; not a timed test).

  decode   batch 1, greedy, fp32: ours (`model.generate`, preallocated KV cache) vs transformers' `generate` on
           the same weights (`hf_model_from`: a stock LlamaForCausalLM, SDPA attention); tokens/s per variant,
           alternated run by run, with the spread and the per-round ratio; the greedy tokens must be identical.
           "matmuls only" is the floor: one F.linear per weight matrix per token and nothing else (a decode step
           reads every weight once, 103 MB for MiniMind2-small in fp32: memory bandwidth, not arithmetic).
  server   `minimind.serve` on loopback: time to first token and total tokens/s for 1 and 8 simultaneous
           streaming clients (the engine serves one request at a time), rounds alternated the same way.

The weights are random (seeded): speed does not depend on what the weights say, and no download is needed.

  .venv/bin/python bench/bench_serve.py                         # MiniMind2-small on CPU, 5 rounds
  .venv/bin/python bench/bench_serve.py --threads 1 --rounds 9  # on a busy shared machine
  .venv/bin/python bench/bench_serve.py --preset tiny --rounds 2 --new-tokens 32   # a quick look
  .venv/bin/python bench/bench_serve.py --preset overhead --skip server   # MiniMind2-small's depth at hidden 64:
                                                                          # what a step costs besides reading weights
"""
import argparse, os, statistics, time

import torch


def spread(xs, fmt="{:.1f}"):
    "median [min-max] of a list"
    return f"{fmt.format(statistics.median(xs))} [{fmt.format(min(xs))}-{fmt.format(max(xs))}]"


def bench_decode(model, rounds, prompt_len, new_tokens):
    "Alternate ours and transformers' generate; returns {variant: [tokens/s per round]} and the per-round ratios."
    from minimind.model import hf_model_from
    hf = hf_model_from(model)
    hf.config._attn_implementation = "sdpa"  # transformers' default for a loaded Llama
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, model.config.vocab_size, (1, prompt_len), generator=g)
    ones = torch.ones_like(prompt)

    def ours(): return model.generate(prompt, new_tokens, temperature=0, eos_token_id=None)

    @torch.inference_mode()
    def theirs(): return hf.generate(prompt, attention_mask=ones, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                     do_sample=False, pad_token_id=0)
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    x = {w.shape[1]: torch.ones(1, 1, w.shape[1]) for w in weights}

    @torch.inference_mode()
    def floor():
        for _ in range(new_tokens):
            for w in weights: torch.nn.functional.linear(x[w.shape[1]], w)
    a, b = ours(), theirs(); floor()  # also the warm-up
    assert torch.equal(a, b), "ours and transformers' greedy tokens differ"
    res, ratios = {"ours": [], "transformers": [], "matmuls only": []}, []
    for r in range(rounds):
        order = [("ours", ours), ("transformers", theirs), ("matmuls only", floor)][:: 1 if r % 2 == 0 else -1]  # alternate the order
        got = {}
        for name, f in order:
            t0 = time.perf_counter(); f(); got[name] = new_tokens / (time.perf_counter() - t0)
            res[name].append(got[name])
        ratios.append(got["ours"] / got["transformers"])
    return res, ratios


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
                out[k]["ttft_mean"].append(1000 * statistics.mean(f for f, _, _ in res))
                out[k]["ttft_worst"].append(1000 * max(f for f, _, _ in res))
                out[k]["tok_s"].append(sum(n for _, _, n in res) / wall)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="minimind2-small", help="a MiniMindConfig preset, or 'overhead'")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=100)
    p.add_argument("--clients", default="1,8")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--skip", choices=["decode", "server"], help="run only the other part")
    a = p.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    from minimind.model import MiniMindConfig, MiniMindForCausalLM
    from minimind.tokenizer import load_tokenizer
    import transformers
    torch.manual_seed(0)
    cfg = (MiniMindConfig.from_preset("minimind2-small", hidden_size=64, intermediate_size=192) if a.preset == "overhead"
           else MiniMindConfig.from_preset(a.preset))  # "overhead": same layers and heads, negligible weights
    model = MiniMindForCausalLM(cfg).eval()
    print(f"{a.preset}: {model.num_params() / 1e6:.1f}M parameters, CPU fp32, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, transformers {transformers.__version__}, {a.rounds} rounds alternated; "
          f"load average {os.getloadavg()[0]:.1f}")
    if a.skip != "decode":
        res, ratios = bench_decode(model, a.rounds, a.prompt_len, a.new_tokens)
        print(f"\ndecode: batch 1, greedy, {a.prompt_len}-token prompt, {a.new_tokens} new tokens (identical tokens checked)")
        print(f"| variant | tokens/s median [min-max] | ms/token |\n|---|---|---|")
        for k, v in res.items(): print(f"| {k} | {spread(v)} | {1000 / statistics.median(v):.1f} |")
        print(f"| ours / transformers, per round | {spread(ratios, '{:.2f}')}x |")
    if a.skip != "server":
        clients = [int(c) for c in a.clients.split(",")]
        out = bench_server(model, load_tokenizer(), a.rounds, clients, a.new_tokens)
        print(f"\nserver: streaming clients at once, {a.new_tokens} tokens each, one generation at a time, median [min-max] of {a.rounds} rounds")
        print("| clients | mean TTFT (ms) | worst TTFT (ms) | tokens/s, all clients |\n|---|---|---|---|")
        for k, v in out.items():
            print(f"| {k} | {spread(v['ttft_mean'], '{:.0f}')} | {spread(v['ttft_worst'], '{:.0f}')} | {spread(v['tok_s'])} |")


if __name__ == "__main__":
    main()
