"""minimind.cli: argument handling in process, and a tiny `minimind train pretrain` + `minimind chat` end to end."""
import os, subprocess, sys
from pathlib import Path

import pytest

from minimind.cli import build_parser, main, run_train, stage_notebooks

ROOT = Path(__file__).resolve().parents[1]


def test_train_pretrain_arguments():
    a = build_parser().parse_args(["train", "pretrain", "--preset", "zero", "--data", "d.jsonl", "--steps", "7", "--batch-size", "4",
                                   "--grad-accum", "16", "--resume", "--wandb", "offline"])
    assert (a.preset, a.data, a.steps, a.batch_size, a.grad_accum, a.resume, a.wandb, a.func) == \
           ("zero", "d.jsonl", 7, 4, 16, True, "offline", run_train)
    a = build_parser().parse_args(["train", "pretrain"])
    assert (a.preset, a.steps, a.lr, a.out, a.device) == ("tiny", None, None, "runs/pretrain", "auto")  # None: the preset decides


@pytest.mark.parametrize("argv", [[], ["train"], ["chat"], ["train", "pretrain", "--wandb", "sometimes"], ["train", "pretrain", "--steps", "x"]])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e: main(argv)
    assert e.value.code == 2 and "usage: minimind" in capsys.readouterr().err


def test_unknown_preset_names_the_choices():
    with pytest.raises(SystemExit, match="unknown preset 'huge'; choose from tiny, course, zero"): main(["train", "pretrain", "--preset", "huge"])


def test_download_delegates_to_minimind_data(capsys):
    with pytest.raises(SystemExit) as e: main(["download", "not_a_file"])
    assert e.value.code == 2 and "pretrain_hq" in capsys.readouterr().err   # minimind.data lists the valid names
    with pytest.raises(SystemExit) as e: main(["download", "--help"])
    assert e.value.code == 0 and "--recipe" in capsys.readouterr().out


def test_course_without_papermill_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "papermill", None)   # makes `import papermill` fail
    with pytest.raises(SystemExit, match=r"pip install 'minimind\[dev\]'"): main(["course"])


def test_stage_notebooks_in_order_without_the_cli():
    nbs = stage_notebooks(ROOT / "nbs")
    assert nbs == sorted(nbs) and "03_pretrain.ipynb" in [p.name for p in nbs]
    assert not [p for p in nbs if p.name.startswith("99_")]
    assert [p.stem for p in stage_notebooks(ROOT / "nbs", ["03_pretrain"])] == ["03_pretrain"]


def test_train_resume_and_chat_end_to_end(tmp_path):
    "`python -m minimind.cli` (what the `minimind` script runs) trains, resumes, and chats with the result."
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "minimind.cli"]
    common = ["train", "pretrain", "--preset", "tiny", "--seq-len", "32", "--batch-size", "4", "--out", str(tmp_path / "run"),
              "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--no-progress", "--eval-every", "2"]
    r = subprocess.run(cli + common + ["--steps", "3"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "step 3: train loss" in r.stdout
    model = tmp_path / "run" / "model"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in model.iterdir()}
    r = subprocess.run(cli + common + ["--steps", "5", "--resume"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stdout and "at step 3" in r.stdout and "step 5: train loss" in r.stdout
    r = subprocess.run(cli + ["chat", "--model", str(model), "--raw", "--prompt", "The colour of", "--max-new-tokens", "4",
                              "--temperature", "0", "--device", "cpu"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("> The colour of\n") and len(r.stdout.splitlines()) >= 2
    script = Path(sys.executable).with_name("minimind")
    if script.exists():
        r = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "course" in r.stdout
