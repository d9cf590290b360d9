"""Decode speed at batch 1 on a CPU: our `generate` (KV cache) vs `transformers`' `generate` on the exported folder
vs llama.cpp on the exported GGUF (f32, f16, q8_0), measured in one run.

    python bench/bench_decode.py                                # MiniMind2-small (random init, seed 0), 1 thread
    python bench/bench_decode.py --rounds 9 --threads 2         # steadier medians; both cores
    python bench/bench_decode.py --preset tiny --new-tokens 32  # a quick check

Every variant decodes the same `--new-tokens` greedy tokens after the same prompt (no early stop at <|im_end|>);
tokens/s counts new tokens over the whole call (the prompt's single forward pass included). The variants run in a
rotating order, round after round, so that load from other jobs on a shared machine falls on all of them; the table
gives the median and the range. Ours and transformers' greedy tokens must be identical (the run stops otherwise);
llama.cpp's agreement with ours is printed (its f16 KV cache and quantized weights may flip a near tie).
llama.cpp needs the `export` extra (`pip install -e ".[export]"`); without it those rows are skipped.
"""
import argparse, platform, statistics, tempfile, time
from pathlib import Path

import torch

from minimind.export import export_gguf, export_hf, llama_cpp_greedy
from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.tokenizer import BOS_ID, load_tokenizer


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="minimind2-small", help="a MiniMindConfig preset (dense)")
    p.add_argument("--new-tokens", type=int, default=128, help="greedy tokens decoded per call")
    p.add_argument("--prompt", default="The colour of Finkim is", help="prompt text (after <|im_start|>)")
    p.add_argument("--rounds", type=int, default=5, help="timed calls per variant, alternated (after one untimed warmup each)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch and llama.cpp (1: steadier on a shared machine)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def variants(model, tok, folder: Path, args):
    "name -> a function decoding args.new_tokens greedy tokens after `ids` (returns the new ids)."
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging
    logging.disable_progress_bar()
    n = args.new_tokens
    out = {"ours: generate (KV cache)": lambda ids: model.generate(torch.tensor([ids]), max_new_tokens=n, temperature=0,
                                                                   eos_token_id=None)[0, len(ids):].tolist()}
    hf = AutoModelForCausalLM.from_pretrained(export_hf(model, tok, folder / "hf")).eval()
    hf.generation_config.eos_token_id = None
    out["transformers: generate"] = lambda ids: hf.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                                                            pad_token_id=0)[0, len(ids):].tolist()
    try: import llama_cpp
    except ImportError:
        print("llama-cpp-python is not installed (pip install -e '.[export]'): llama.cpp rows skipped")
        return out
    for dt in ("f32", "f16", "q8_0"):
        llm = llama_cpp.Llama(str(export_gguf(model, tok, folder / f"model-{dt}.gguf", dt)), n_ctx=len(args.prompt) + n + 64,
                              n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
        out[f"llama.cpp {dt}"] = lambda ids, llm=llm: llama_cpp_greedy(llm, ids, n, eos_token_id=None)
    return out


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tok = load_tokenizer()
    model = MiniMindForCausalLM(MiniMindConfig.from_preset(args.preset)).eval()
    ids = [BOS_ID] + tok.encode(args.prompt).ids
    with tempfile.TemporaryDirectory() as d, torch.inference_mode():
        runs = variants(model, tok, Path(d), args)
        names = list(runs)
        tokens = {k: f(ids) for k, f in runs.items()}                       # warmup, and the greedy tokens
        ref = tokens[names[0]]
        if tokens["transformers: generate"] != ref: raise SystemExit("transformers' greedy tokens differ from ours")
        speeds = {k: [] for k in names}
        for r in range(args.rounds):
            for k in names[r % len(names):] + names[:r % len(names)]:     # rotate the order every round
                t0 = time.perf_counter(); got = runs[k](ids); dt = time.perf_counter() - t0
                assert len(got) == args.new_tokens, (k, len(got))
                speeds[k].append(args.new_tokens / dt)
    base = statistics.median(speeds["transformers: generate"])
    print(f"\n{args.preset}, {model.num_params():,} parameters (random init, seed {args.seed}), batch 1, prompt {len(ids)} tokens, "
          f"{args.new_tokens} new tokens, {args.threads} thread(s), {args.rounds} alternated rounds; "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}\n")
    print(f"| variant | tokens/s (median) | range over rounds | × transformers | greedy tokens equal to ours |")
    print(f"|---|---|---|---|---|")
    for k in names:
        s = speeds[k]; same = sum(a == b for a, b in zip(tokens[k], ref)) / len(ref)
        print(f"| {k} | {statistics.median(s):.0f} | {min(s):.0f}–{max(s):.0f} | {statistics.median(s) / base:.2f}× | {same:.0%} |")


if __name__ == "__main__":
    main()
