"""minimind.train: token cache, packing, resumable order, LR schedule, the Trainer, checkpoints that survive
kill -9, DDP on CPU (gloo) against a single process, the final model folder, wandb without network."""
import json, os, random, signal, subprocess, sys, textwrap, time, warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from minimind.data import DataError
from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.tokenizer import BOS_ID, EOS_ID, PAD_ID, load_tokenizer
from minimind.train import (CheckpointError, PackedDataset, held_out_metrics, RowSampler, TrainConfig, Trainer, atomic_write, latest_checkpoint,
                            list_checkpoints, load_checkpoint, lr_at, pretrain, save_checkpoint, token_file_meta, tokenize_corpus)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "dataset" / "pretrain.jsonl"
MICRO = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)  # ~0.2M parameters


@pytest.fixture(scope="module")
def tok(): return load_tokenizer()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    "The first 400 documents of the bundled sample."
    p = tmp_path_factory.mktemp("corpus") / "small.jsonl"
    p.write_text("".join(SAMPLE.read_text(encoding="utf-8").splitlines(keepends=True)[:400]), encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def token_file(corpus, tok, tmp_path_factory):
    return tokenize_corpus(corpus, tok, tmp_path_factory.mktemp("cache"), progress=False)


def micro_model(seed=0):
    torch.manual_seed(seed)
    return MiniMindForCausalLM(MiniMindConfig.from_preset("tiny", **MICRO))


def quiet_cfg(**kw):
    return TrainConfig(**{"device": "cpu", "progress": False, "live_plot": False, "eval_every": 0, "ckpt_every": 0, **kw})


# --- data ---------------------------------------------------------------------------------------------------

def test_packing_has_no_padding_and_keeps_boundaries(token_file, corpus):
    toks = np.fromfile(token_file, dtype=np.uint16)
    n_docs = len(corpus.read_text(encoding="utf-8").splitlines())
    assert toks[0] == BOS_ID and toks[-1] == EOS_ID
    assert (toks == BOS_ID).sum() == (toks == EOS_ID).sum() == n_docs
    assert (toks == PAD_ID).sum() == 0
    starts, ends = np.flatnonzero(toks == BOS_ID), np.flatnonzero(toks == EOS_ID)
    assert (starts[1:] == ends[:-1] + 1).all(), "documents must be back to back: <|im_end|><|im_start|>"
    ds = PackedDataset(token_file, 16)
    assert len(ds) == (len(toks) - 1) // 16
    b = ds.get_batch(np.arange(len(ds)))
    assert torch.equal(b["labels"][:, :-1], b["input_ids"][:, 1:])
    assert np.array_equal(b["input_ids"].flatten().numpy(), toks[:16 * len(ds)])  # rows tile the stream, nothing dropped or padded
    tr, va = ds.split(0.1)
    assert len(tr) + len(va) == len(ds) and va.rows.min() > tr.rows.max()


def test_cache_is_keyed_by_tokenizer_and_file(corpus, tok, tmp_path):
    from tokenizers import Tokenizer
    f = tmp_path / "c.jsonl"; f.write_bytes(corpus.read_bytes())
    p1 = tokenize_corpus(f, tok, tmp_path / "cache", progress=False)
    mtime = p1.stat().st_mtime_ns
    assert tokenize_corpus(f, tok, tmp_path / "cache", progress=False) == p1 and p1.stat().st_mtime_ns == mtime  # a hit
    tok2 = Tokenizer.from_str(tok.to_str()); tok2.add_tokens(["zqxjv"])
    assert tokenize_corpus(f, tok2, tmp_path / "cache", progress=False) != p1                 # another tokenizer
    with open(f, "a", encoding="utf-8") as fh: fh.write('{"text": "one more document"}\n')
    p3 = tokenize_corpus(f, tok, tmp_path / "cache", progress=False)
    assert p3 != p1 and token_file_meta(p3)["n_docs"] == token_file_meta(p1)["n_docs"] + 1  # an edited file
    assert not list((tmp_path / "cache").glob(".tmp-*")), "temp files must not be left behind"


def test_bad_lines_name_file_and_line_or_are_counted(tok, tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "fine"}\n{"text": "fine too"}\n{"txt": "wrong field"}\n{"text": "fine"}\nnot json\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{f}:3: "): tokenize_corpus(f, tok, tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").glob("*.u16")), "a failed run must not leave a cache file"
    with pytest.warns(UserWarning, match="skipped 2 bad lines"):
        p = tokenize_corpus(f, tok, tmp_path / "cache", skip_bad=True, progress=False)
    assert token_file_meta(p)["n_bad"] == 2 and token_file_meta(p)["n_docs"] == 3


def test_sampler_order_is_deterministic_and_resumable():
    a = RowSampler(50, seed=3); seq = [a.take(8) for _ in range(20)]   # crosses several epochs
    b = RowSampler(50, seed=3); [b.take(8) for _ in range(7)]
    c = RowSampler(50, seed=3); c.load_state_dict(b.state_dict())
    for i in range(7, 20): assert np.array_equal(c.take(8), seq[i])
    assert len(set(np.concatenate(seq[:6]).tolist())) == 48           # an epoch: no repeats, a short tail dropped
    with pytest.raises(ValueError): RowSampler(4).take(5)


def test_lr_schedule():
    S, peak = 100, 1e-3
    lrs = [lr_at(s, S, peak, warmup_steps=10, min_lr_ratio=0.1) for s in range(S + 1)]
    assert lrs[0] == pytest.approx(peak / 10) and lrs[9] == pytest.approx(peak)
    assert all(x <= y for x, y in zip(lrs[:10], lrs[1:10]))
    assert all(x >= y for x, y in zip(lrs[10:], lrs[11:]))
    assert lrs[S] == pytest.approx(0.1 * peak) and lrs[55] == pytest.approx(peak * (0.1 + 0.9 * 0.5))


# --- training ---------------------------------------------------------------------------------------------

def test_tiny_pretrain_loss_falls_and_final_folder_loads(corpus, tok, tmp_path):
    t = pretrain(corpus, "tiny", run_dir=tmp_path / "run", cache_dir=tmp_path / "cache", steps=30, seq_len=64, batch_size=8,
                 lr=5e-3, eval_every=15, device="cpu", progress=False, live_plot=False, model_overrides=MICRO)
    first, last = np.mean([h["loss"] for h in t.history[:3]]), np.mean([h["loss"] for h in t.history[-3:]])
    assert last < first - 1.5, (first, last)
    assert [e["step"] for e in t.eval_history] == [0, 15, 30] and t.eval_history[-1]["eval_loss"] < t.eval_history[0]["eval_loss"] - 1
    folder = tmp_path / "run" / "model"
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    m = MiniMindForCausalLM.from_pretrained(folder)
    x = torch.tensor([[BOS_ID, 5, 6, 7]])
    assert torch.allclose(m(x).logits, t.model.eval()(x).logits, atol=1e-5)
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000 and (tmp_path / "run" / "history.json").exists()


SCRIPT = textwrap.dedent("""
    import sys, time, torch
    from minimind.model import MiniMindConfig, MiniMindForCausalLM
    from minimind.train import PackedDataset, TrainConfig, Trainer, causal_lm_loss
    token_file, run_dir, steps, bs, accum, delay = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
    dropout = float(sys.argv[7])
    def slow_loss(model, batch):  # gives the test time to kill the process mid-run
        time.sleep(delay); return causal_lm_loss(model, batch)
    ds = PackedDataset(token_file, 32); train, held = ds.split(0.1)
    torch.manual_seed(0)
    model = MiniMindForCausalLM(MiniMindConfig.from_preset("tiny", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, dropout=dropout))
    cfg = TrainConfig(max_steps=steps, batch_size=bs, grad_accum=accum, lr=3e-3, warmup_steps=3, eval_every=5, eval_batches=2,
                      ckpt_every=3, run_dir=run_dir, device="cpu", progress=False, live_plot=False)
    t = Trainer(model, train, loss_fn=slow_loss, eval_data=held, cfg=cfg).fit(resume=True)
    if t.rank == 0: torch.save(model.state_dict(), run_dir + "/final.pt")
    if t.world > 1: torch.distributed.destroy_process_group()
""")


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _history(run_dir): return json.loads((Path(run_dir) / "history.json").read_text())


def test_kill9_and_resume_gives_identical_losses(token_file, tmp_path):
    "A run killed with SIGKILL at a random step and resumed reproduces the uninterrupted run's per-step losses."
    script = tmp_path / "train.py"; script.write_text(SCRIPT)
    steps = 24
    args = lambda d: [sys.executable, str(script), str(token_file), str(d), str(steps), "4", "2", "0.02", "0.1"]  # dropout on: the RNG state must resume too
    ref = subprocess.run(args(tmp_path / "ref"), env=_env(), capture_output=True, text=True, timeout=120)
    assert ref.returncode == 0, ref.stderr[-2000:]
    kill_at = random.Random().randint(4, steps - 4)
    p = subprocess.Popen(args(tmp_path / "run"), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log, t0 = tmp_path / "run" / "log.jsonl", time.time()
    while not (log.exists() and len(log.read_text().splitlines()) >= kill_at):
        assert p.poll() is None, p.stderr.read().decode()[-2000:]
        assert time.time() - t0 < 90, "the run never reached the kill step"
        time.sleep(0.005)
    os.kill(p.pid, signal.SIGKILL); p.wait()
    done = len(log.read_text().splitlines())
    assert done < steps and not (tmp_path / "run" / "history.json").exists(), "killed too late"
    res = subprocess.run(args(tmp_path / "run"), env=_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    resumed = [l for l in res.stdout.splitlines() if l.startswith("resumed from")]
    assert resumed or done < 3, f"no resume after a kill at step {done}: {res.stdout}"
    a, b = _history(tmp_path / "ref"), _history(tmp_path / "run")
    assert [h["loss"] for h in a["train"]] == [h["loss"] for h in b["train"]], f"losses differ after a kill at step {done}"
    assert [e["eval_loss"] for e in a["eval"]] == [e["eval_loss"] for e in b["eval"]]
    wa, wb = torch.load(tmp_path / "ref" / "final.pt"), torch.load(tmp_path / "run" / "final.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_partial_or_corrupt_checkpoints_never_replace_a_good_one(tmp_path):
    ck = tmp_path / "checkpoints"
    save_checkpoint({"step": 3, "w": torch.arange(4.0)}, ck / "step_00000003.pt")
    class Crash(Exception): pass
    with pytest.raises(Crash):                                     # dies in the middle of overwriting it
        with atomic_write(ck / "step_00000003.pt") as f: f.write(b"PK\x03\x04 half"); raise Crash
    assert torch.equal(load_checkpoint(ck / "step_00000003.pt")["w"], torch.arange(4.0))
    assert [p.name for p in ck.iterdir()] == ["step_00000003.pt"], "the temp file must be removed"
    (ck / ".tmp-step_00000006.pt.abc123").write_bytes(b"what a SIGKILL mid-write leaves")   # ignored: not a finished name
    good = (ck / "step_00000003.pt").read_bytes()
    (ck / "step_00000009.pt").write_bytes(good[: len(good) // 2])                          # a truncated newer one
    assert [p.name for p in list_checkpoints(ck)] == ["step_00000009.pt", "step_00000003.pt"]
    with pytest.raises(CheckpointError, match="step_00000009.pt: truncated or corrupt"): load_checkpoint(ck / "step_00000009.pt")
    with pytest.warns(UserWarning, match="skipping"): path, state = latest_checkpoint(ck)
    assert path.name == "step_00000003.pt" and state["step"] == 3


def test_checkpoints_load_weights_only(tmp_path, token_file):
    "Checkpoints hold no pickled objects: a file with one is refused, and a real one loads with weights_only."
    torch.save({"step": 1, "evil": Path("x")}, tmp_path / "step_00000001.pt")
    with pytest.raises(CheckpointError): load_checkpoint(tmp_path / "step_00000001.pt")
    t = Trainer(micro_model(), PackedDataset(token_file, 16), cfg=quiet_cfg(max_steps=2, batch_size=2, run_dir=str(tmp_path / "r"), ckpt_every=1))
    t.fit()
    st = torch.load(list_checkpoints(t.ckpt_dir)[0], weights_only=True)
    assert st["step"] == 2 and {"model", "optimizer", "sampler", "rng", "history"} <= set(st)


def test_ddp_gloo_matches_single_process(token_file, tmp_path):
    "torchrun with 2 CPU processes (gloo), 2 rows each, gives the weights of one process with 4 rows."
    script = tmp_path / "train.py"; script.write_text(SCRIPT)
    one = subprocess.run([sys.executable, str(script), str(token_file), str(tmp_path / "one"), "3", "4", "2", "0", "0"],
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(script),
                          str(token_file), str(tmp_path / "two"), "3", "2", "2", "0", "0"], env=_env(), capture_output=True, text=True, timeout=180)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = torch.load(tmp_path / "one" / "final.pt"), torch.load(tmp_path / "two" / "final.pt")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    la, lb = [h["loss"] for h in _history(tmp_path / "one")["train"]], [h["loss"] for h in _history(tmp_path / "two")["train"]]
    assert np.allclose(la, lb, atol=1e-5), (la, lb)


def test_wandb_offline_and_disabled_need_no_network(token_file, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # any network attempt would fail at once
    monkeypatch.setenv("WANDB_SILENT", "true")
    ds = PackedDataset(token_file, 16)
    Trainer(micro_model(), ds, cfg=quiet_cfg(max_steps=2, batch_size=2, run_dir=str(tmp_path / "off"), wandb_mode="offline",
                                            wandb_project="minimind-test", log_every=1)).fit()
    runs = list((tmp_path / "off" / "wandb").glob("offline-run-*"))
    assert runs and list(runs[0].glob("*.wandb")), "offline mode must write a local run to sync later"
    Trainer(micro_model(), ds, cfg=quiet_cfg(max_steps=2, batch_size=2, run_dir=str(tmp_path / "dis"), wandb_mode="disabled")).fit()
    assert not (tmp_path / "dis" / "wandb").exists()


def test_outcomes_are_written_atomically_and_tabled_in_stage_order(tmp_path):
    from minimind.train import outcome_table, read_outcomes, record_outcome
    record_outcome(tmp_path / "04_sft", "sft", [{"key": "sft.loss", "metric": "held-out loss", "before": 3.4, "after": 0.84, "unit": "nats"},
                                                 {"metric": "facts", "before": 0.083, "after": 0.427, "unit": "%"}])
    record_outcome(tmp_path / "03_pretrain", "pretrain", [{"metric": "facts", "before": 0.0, "after": 0.51, "unit": "%"},
                                                           {"metric": "facts, en", "before": None, "after": 0.9, "unit": "%"}])
    rows = read_outcomes(tmp_path)
    assert [r["stage"] for r in rows] == ["pretrain", "pretrain", "sft", "sft"]
    table = outcome_table(rows).splitlines()
    assert table[0] == "| stage | key | metric | before | after |" and len(table) == 2 + 4
    assert table[2] == "| pretrain |  | facts | 0.0% | 51.0% |" and table[3] == "| pretrain |  | facts, en | – | 90.0% |"
    assert table[4] == "| sft | sft.loss | held-out loss | 3.400 | 0.840 |"
    assert not list(tmp_path.rglob(".tmp-*"))


# --- out of memory -----------------------------------------------------------------------------------------

def test_out_of_memory_is_one_line_naming_the_settings(monkeypatch, capsys, tmp_path):
    "The CLI turns the allocator's out-of-memory error into one line with the --batch-size/--grad-accum to pass."
    from minimind.cli import main
    def oom(self): raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.6 GiB total capacity)")
    monkeypatch.setattr(Trainer, "train_step", oom)
    rc = main(["train", "pretrain", "--preset", "tiny", "--steps", "2", "--grad-accum", "2", "--out", str(tmp_path / "r"),
               "--device", "cpu", "--no-progress", "--eval-every", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err
    assert err[0].startswith("minimind: error: out of memory on cpu while training micro-batches of 8 rows: "
                             "pass --batch-size 4 --grad-accum 4 (the same 16-row step"), err[0]
    assert "--batch-size auto" in err[0] and "--seq-len" in err[0]


def test_batch_size_auto_halves_until_it_fits_and_keeps_the_global_batch(monkeypatch, capsys, tmp_path):
    "--batch-size auto: the largest micro-batch whose forward and backward fit, grad_accum making up the step."
    import minimind.train as mt
    from minimind.cli import main
    real = mt.fits_in_memory
    monkeypatch.setattr(mt, "fits_in_memory", lambda t, b: b <= 2 and real(t, b))   # more than 2 rows: out of memory, as on a small GPU
    rc = main(["train", "pretrain", "--preset", "tiny", "--steps", "2", "--batch-size", "auto", "--out", str(tmp_path / "r"),
               "--device", "cpu", "--no-progress", "--eval-every", "0"])
    out = capsys.readouterr().out
    assert rc == 0 and "batch size auto: 2 rows x 4 micro-batches per step (the 8-row step kept; tried [8, 4, 2])" in out, out
    hist = json.loads((tmp_path / "r" / "history.json").read_text())["train"]
    assert [h["tokens"] for h in hist] == [8 * 128] * 2                                   # the tiny preset's 8 rows of 128 per step
    with pytest.raises(mt.OutOfMemory, match="1 row"): mt.find_batch_size(lambda b: False, 8)
    assert mt.find_batch_size(lambda b: b <= 5, 48) == 3 and mt.find_batch_size(lambda b: True, 48, start=16) == 16
    assert mt.is_oom(RuntimeError("DefaultCPUAllocator: not enough memory")) and not mt.is_oom(RuntimeError("shape mismatch"))


def test_held_out_loss_and_metrics_do_not_depend_on_the_batch_size(tok):
    "Every held-out number is a mean over what it counts (tokens; DPO: pairs), not a mean of batch means."
    from minimind.sft import SFTDataset, load_sft
    from minimind.distill import kd_loss
    held = SFTDataset(load_sft(ROOT / "dataset" / "sft_eval.jsonl", tok, 129), 128)
    model = micro_model()
    def ev(bs):
        t = Trainer(model, held, kd_loss, eval_data=held, cfg=quiet_cfg(batch_size=bs, eval_batches=10_000))
        return t.evaluate(), t.eval_metrics["acc"]
    (l3, a3), (l16, a16) = ev(3), ev(16)
    assert abs(l3 - l16) < 1e-5 and abs(a3 - a16) < 1e-6, (l3, l16, a3, a16)
    batch = held.get_batch(np.arange(len(held)))                                     # all rows at once: the token mean itself
    with torch.no_grad(): whole = torch.nn.functional.cross_entropy(model(**{k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}).logits.flatten(0, 1),
                                                                   batch["labels"].flatten(), ignore_index=-100).item()
    assert abs(l3 - whole) < 1e-4, (l3, whole)
    model.train()                                      # the one scorer, called directly (notebook 08 does): same numbers, mode restored
    m = held_out_metrics(model, held, kd_loss, batch_size=5)
    assert abs(m["loss"] - l3) < 1e-5 and abs(m["acc"] - a3) < 1e-6 and model.training, (m, l3, a3)


def test_a_fresh_run_replaces_an_earlier_runs_checkpoints(tmp_path, token_file):
    """A fresh fit in a folder with an earlier, longer run's checkpoints removes them (with a warning): otherwise pruning would delete
    this run's checkpoints and a resume would continue the earlier run. fit(resume=True) keeps and continues them."""
    run = str(tmp_path / "r")
    Trainer(micro_model(), PackedDataset(token_file, 16), cfg=quiet_cfg(max_steps=6, batch_size=2, run_dir=run, ckpt_every=2, keep_ckpts=2)).fit()
    ck = tmp_path / "r" / "checkpoints"
    assert [p.name for p in list_checkpoints(ck)] == ["step_00000006.pt", "step_00000004.pt"]
    t = Trainer(micro_model(1), PackedDataset(token_file, 16), cfg=quiet_cfg(max_steps=2, batch_size=2, run_dir=run, ckpt_every=2, keep_ckpts=2))
    with pytest.warns(UserWarning, match="removing 2 checkpoint"): t.fit()
    assert [p.name for p in list_checkpoints(ck)] == ["step_00000002.pt"]
    more = Trainer(micro_model(1), PackedDataset(token_file, 16), cfg=quiet_cfg(max_steps=4, batch_size=2, run_dir=run, ckpt_every=2, keep_ckpts=2))
    with warnings.catch_warnings(): warnings.simplefilter("error"); more.fit(resume=True)     # continues this run: nothing removed, no warning
    assert [h["step"] for h in more.history] == [1, 2, 3, 4] and more.history[:2] == t.history           # this run, continued
    assert [p.name for p in list_checkpoints(ck)] == ["step_00000004.pt", "step_00000002.pt"]
