"""bench/gpu_check.py, the one command that proves the GPU path, run here at toy size on the CPU so that it never rots:
every part runs, its report has every section, and its numbers are sane (a resumed run continues at the same loss
bit for bit, packing trains more tokens than padding, every stage trains its steps, the notebook job trains). And
the training path needs nothing beyond a stock PyTorch image."""
import json, os, subprocess, sys, textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"
SECTIONS = ["## 1. Device, versions, matmul peak", "## 2. Training throughput, variants alternated",
            "## 3. Pretraining through the CLI: eager, compiled, killed and resumed", "## 4. The later stages on this device, and a chat",
            "## 5. The papermill job", "## Targets (issue 17, an H100-class GPU)"]
# What a stock PyTorch image (torch, transformers, tokenizers, safetensors, numpy and their dependencies) does not hold
NOT_IN_STOCK_IMAGE = ["matplotlib", "wandb", "ipywidgets", "IPython", "ipykernel", "jupyter_client", "papermill", "nbdev", "fastcore",
                      "gguf", "streamlit", "fastapi", "uvicorn", "openai", "pytest"]


def run_check(out: Path, *args, env=None, timeout=900):
    r = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--threads", "1", "--out", str(out), *args],
                       env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return r, json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    r, res = run_check(out)
    assert r.returncode == 0, (r.stdout[-4000:], r.stderr[-4000:])
    return out, res, (out / "report.md").read_text(encoding="utf-8")


def test_every_part_runs_and_the_report_has_every_section(quick):
    out, res, md = quick
    assert res["parts"] == {k: True for k in "12345"}
    positions = [md.find(s) for s in SECTIONS]
    assert -1 not in positions and positions == sorted(positions), [s for s, p in zip(SECTIONS, positions) if p < 0]
    assert "**No CUDA run backs these numbers**" in md and "FAILED" not in md
    assert not res["errors"]


def test_throughput_rows_are_sane(quick):
    _, res, _ = quick
    (tiny,) = res["throughput"]["results"]
    rows = {(r["name"], r["compiled"]): r for r in tiny["rows"]}
    assert len(rows) == 7 and sum(c for _, c in rows) == 2                         # 5 variants eager, 2 compiled
    for r in rows.values():
        assert r["useful_tok_s"] > 0 and 0 < r["mfu"] < 2 and r["positions_s"] >= 0.95 * r["useful_tok_s"] and 0 < r["share"] <= 1
        assert all(x > 0 for x in r["vs_base"]) and r["vs_base"][1] <= r["vs_base"][0] <= r["vs_base"][2]
    assert rows[("ours (packed)", False)]["share"] == 1.0 > rows[("MiniMind-style padded", False)]["share"]      # packing trains every position
    assert rows[("SFT packed (block-diagonal)", False)]["share"] > 2 * rows[("SFT padded (MiniMind)", False)]["share"]
    assert rows[("ours (packed)", False)]["vs_base"] == [1.0, 1.0, 1.0]
    assert rows[("ours (packed)", True)]["vs_eager"] is not None


def test_pretraining_learns_and_a_killed_run_resumes_at_the_same_loss(quick):
    _, res, md = quick
    pre, corpus = res["pretrain"], res["corpus"]
    assert corpus["bytes"] >= 2e6 and corpus["tokens"] > 1e5 and corpus["tokenize_mb_s"] > 0
    assert 800 < corpus["bytes"] / corpus["docs"] < 1500                              # pretrain_hq's ~1.1 kB documents
    for name in ("eager", "compiled"):
        x = pre[name]
        assert x["last_loss"] < x["first_loss"] - 1.5 and x["eval"][-1][1] < x["eval"][0][1] - 1.5 and x["tok_s"] > 0
    assert pre["eager"]["first_loss"] == pre["compiled"]["first_loss"]             # the same model and data, compiled or not
    k = pre["resume"]
    assert k["resumed"] and k["resumed"].startswith("resumed from") and k["killed_after_step"] == 6
    assert k["steps_compared"] == pre["steps"] - 6 and k["max_abs_diff"] <= 1e-6 and k["eval_max_abs_diff"] <= 1e-6
    assert k["first_resumed"][1] == k["first_resumed"][2]
    pj = pre["projection"]
    assert pj["pretrain_min"] == pytest.approx(pj["pretrain_tokens"] / pj["pretrain_rate"] / 60) and pj["sft_min"] > 0
    assert f"max |Δ loss| = **{k['max_abs_diff']:.2e}**" in md


def test_every_later_stage_trains_on_this_device_and_the_model_chats(quick):
    _, res, _ = quick
    st = res["stages"]
    assert {"sft", "lora", "dpo", "distill", "reason", "grpo", "chat"} <= set(st)
    for name, x in st.items():
        if name == "chat": continue
        assert x["ok"] and x["rc"] == 0 and x["steps"] == 2, (name, x)
        assert x["init_from"] == ("pretrain" if name == "sft" else "reason" if name == "grpo" else "sft")
    assert st["chat"]["ok"] and st["chat"]["text"].count("> ") == 2


def test_the_papermill_job_trains_its_steps(quick):
    out, res, _ = quick
    pm = res["papermill"]
    assert pm["ran"] and pm["rc"] == 0 and pm["steps"] == 10 and (out / "papermill" / "03_pretrain.ipynb").exists()
    loss = next(r for r in pm["outcome"] if r["metric"].startswith("held-out loss"))
    assert loss["after"] < loss["before"] - 1.0


STOCK = textwrap.dedent("""
    # A stock PyTorch image: these packages cannot be found (as if not installed), in this process and every child.
    import sys
    from importlib.machinery import PathFinder
    BLOCKED = set({blocked!r})
    class StockImage(PathFinder):
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            return None if name.partition(".")[0] in BLOCKED else PathFinder.find_spec(name, path, target)
    sys.meta_path[:] = [StockImage if f is PathFinder else f for f in sys.meta_path]
""")


def test_the_training_path_needs_only_a_stock_pytorch_image(tmp_path):
    "Without matplotlib, wandb, IPython, papermill...: pretraining, resume and every stage run; the notebook job says what to bring."
    site = tmp_path / "site"; site.mkdir()
    (site / "sitecustomize.py").write_text(STOCK.format(blocked=NOT_IN_STOCK_IMAGE))
    probe = subprocess.run([sys.executable, "-c", "import importlib.util as u; print(u.find_spec('matplotlib'), u.find_spec('torch') is not None)"],
                           env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True)
    assert probe.stdout.split() == ["None", "True"], probe.stdout + probe.stderr
    r, res = run_check(tmp_path / "out", "--parts", "3,4,5", env={"PYTHONPATH": str(site)})
    assert r.returncode == 0, (r.stdout[-4000:], r.stderr[-4000:])
    assert res["parts"] == {"3": True, "4": True, "5": True}
    assert res["pretrain"]["resume"]["max_abs_diff"] <= 1e-6
    assert not (tmp_path / "out" / "pretrain" / "eager" / "loss.png").exists() and (tmp_path / "out" / "pretrain" / "eager" / "history.json").exists()
    pm = res["papermill"]
    assert not pm["ran"] and pm["reason"].startswith("skipped: papermill, ipykernel, matplotlib, fastcore not installed")
    assert "--wheels wheels" in pm["reason"]
