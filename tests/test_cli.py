"""minimind.cli: argument handling in process, and a tiny `minimind train pretrain` + `minimind chat` end to end."""
import os, shutil, subprocess, sys
from pathlib import Path

import pytest

import minimind.cli as cli
import minimind.data as data
from minimind.cli import build_parser, main, run_train, stage_notebooks
from minimind.data import DataError, SAMPLE_FILES

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




def test_download_delegates_to_minimind_data(capsys):
    with pytest.raises(SystemExit) as e: main(["download", "not_a_file"])
    assert e.value.code == 2 and "pretrain_hq" in capsys.readouterr().err   # minimind.data lists the valid names
    with pytest.raises(SystemExit) as e: main(["download", "--help"])
    assert e.value.code == 0 and "--recipe" in capsys.readouterr().out


def one_error_line(capsys, argv) -> str:
    "Run `minimind argv` in process: it must return 1 and print exactly one line, `minimind: error: ...`, no traceback."
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1 and len(err.splitlines()) == 1 and err.startswith("minimind: error: ") and "Traceback" not in err, (code, err)
    return err.strip()


def test_course_without_papermill_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "papermill", None)   # makes `import papermill` fail
    assert "pip install 'minimind[dev]'" in one_error_line(capsys, ["course"])


def test_course_outside_the_checkout_says_how_to_get_it(monkeypatch, tmp_path, capsys):
    "An installed package has no notebooks: say so, with the clone command, before asking for papermill."
    monkeypatch.setattr(cli, "repo_root", lambda: tmp_path)
    monkeypatch.setitem(sys.modules, "papermill", None)
    assert "git clone https://github.com/minimind-course/minimind && cd minimind && make course" in one_error_line(capsys, ["course"])


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


# --- a user's mistakes: one line naming the file, status 1, no traceback (`--debug`: the exception) ---

TRAIN = ["train", "pretrain", "--preset", "tiny", "--seq-len", "32", "--batch-size", "2", "--device", "cpu", "--no-progress"]


def jsonl(path: Path, n: int) -> Path:
    "The first `n` documents of the bundled pretraining sample."
    path.write_text("".join(open(ROOT / "dataset" / "pretrain.jsonl", encoding="utf-8").readlines()[:n]), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    "A saved tiny model folder (config.json + model.safetensors)."
    from minimind.model import MiniMindConfig, MiniMindForCausalLM
    d = tmp_path_factory.mktemp("model") / "model"
    MiniMindForCausalLM(MiniMindConfig.from_preset("tiny")).save_pretrained(d)
    return d


def test_malformed_data_file(tmp_path, capsys):
    bad = jsonl(tmp_path / "bad.jsonl", 2); bad.write_text(bad.read_text() + '{"text": "three"\n')
    err = one_error_line(capsys, TRAIN + ["--data", str(bad), "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "c")])
    assert f"{bad}:3: invalid JSON" in err
    bad.write_text('{"text": "one"}\n{"txt": "two"}\n')
    err = one_error_line(capsys, TRAIN + ["--data", str(bad), "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "c")])
    assert f"{bad}:2: missing field 'text'" in err


def test_missing_data_file(tmp_path, capsys):
    err = one_error_line(capsys, TRAIN + ["--data", "nope.jsonl", "--out", str(tmp_path / "run")])
    assert err == "minimind: error: nope.jsonl: no such file"


def test_unknown_preset_names_the_choices(capsys):
    err = one_error_line(capsys, ["train", "pretrain", "--preset", "huge"])
    assert "unknown preset 'huge'; choose from tiny, course, zero" in err


def test_folder_that_is_not_a_model(tmp_path, capsys):
    assert f"{tmp_path}: not a model folder, no config.json" in one_error_line(capsys, ["chat", "--model", str(tmp_path), "--prompt", "hi"])
    assert f"{tmp_path / 'nope'}: no such model folder" in one_error_line(capsys, ["chat", "--model", str(tmp_path / "nope"), "--prompt", "hi"])


def test_corrupt_weights_and_config(model_dir, tmp_path, capsys):
    bad = tmp_path / "m"; shutil.copytree(model_dir, bad)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a download cut in half
    assert f"{weights}: not a readable weights file, truncated or corrupt" in one_error_line(capsys, ["chat", "--model", str(bad), "--prompt", "hi"])
    (bad / "config.json").write_text('{"hidden_size": 64,')
    assert f"{bad / 'config.json'}: not a MiniMind config" in one_error_line(capsys, ["chat", "--model", str(bad), "--prompt", "hi"])


def test_resume_whose_data_changed(tmp_path, capsys):
    "The checkpoint remembers how many rows its data had: a resume on other data names the checkpoint and the change."
    data, run = jsonl(tmp_path / "d.jsonl", 40), tmp_path / "run"
    args = TRAIN + ["--data", str(data), "--out", str(run), "--cache-dir", str(tmp_path / "c"), "--eval-every", "100"]
    assert main(args + ["--steps", "2", "--ckpt-every", "2"]) == 0
    capsys.readouterr()
    jsonl(data, 80)  # the file grew
    err = one_error_line(capsys, args + ["--steps", "4", "--resume"])
    assert f"{run / 'checkpoints' / 'step_00000002.pt'}: cannot resume: the data changed" in err and "rows" in err


def test_debug_shows_the_exception(tmp_path):
    bad = tmp_path / "bad.jsonl"; bad.write_text('{"text": "one"}\nnot json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: invalid JSON"):
        main(["--debug"] + TRAIN + ["--data", str(bad), "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "c")])


def test_a_bug_keeps_its_traceback(monkeypatch):
    "Only the kinds of error a user causes are shortened; anything else is a bug and propagates."
    monkeypatch.setattr(cli, "run_sample", lambda a: {}["boom"])  # a KeyError is a bug, not a user's mistake
    with pytest.raises(KeyError): main(["sample"])


# --- the bundled sample, wherever the package is ---

def test_sample_command_two_writers_at_once(tmp_path):
    "Two `minimind sample` processes racing for one folder: both succeed, the files are the committed ones, no temp left."
    cmd = [sys.executable, "-m", "minimind.cli", "sample", "--out", str(tmp_path / "s")]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and f"wrote {len(SAMPLE_FILES)} files" in out, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    for f in SAMPLE_FILES.values(): assert (tmp_path / "s" / f).read_bytes() == (ROOT / "dataset" / f).read_bytes(), f


def test_sample_path_generates_into_the_cache_once(monkeypatch, tmp_path, capsys):
    "Installed without the checkout, the first `sample_path` writes the sample into the cache and says where; then reuses it."
    assert data._checkout_dataset() == ROOT / "dataset" and data.SAMPLE_DIR == ROOT / "dataset"  # here: the committed files
    cache = tmp_path / "cache" / "sample-0.1.0"
    monkeypatch.setattr(data, "SAMPLE_DIR", cache)
    p = data.sample_path("pretrain")
    assert p == cache / "pretrain.jsonl" and capsys.readouterr().err == f"minimind: generated the bundled sample (make_sample, seed 0) in {cache}\n"
    for f in SAMPLE_FILES.values(): assert (cache / f).read_bytes() == (ROOT / "dataset" / f).read_bytes(), f
    assert data.sample_path("sft") == cache / "sft.jsonl" and capsys.readouterr().err == ""  # made once
    monkeypatch.setenv("MINIMIND_CACHE", str(tmp_path / "elsewhere"))
    assert data.cache_dir() == tmp_path / "elsewhere"


def test_chat_with_tools_runs_the_agent_loop(model_dir, capsys, monkeypatch):
    "`minimind chat --tools`: the model's calls are run and printed, then its answer; --raw cannot go with --tools."
    import minimind.tools
    turns = iter(['<tool_call>\n{"name": "calculator", "arguments": {"expression": "47 * 85"}}\n</tool_call>', "47 × 85 = 3995."])
    seen = []
    def scripted(model, tok, max_new_tokens=128):
        def generate(prompt): seen.append(prompt); return next(turns)
        return generate
    monkeypatch.setattr(minimind.tools, "generate_reply", scripted)
    assert main(["chat", "--model", str(model_dir), "--tools", "--prompt", "What is 47 × 85?"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["> What is 47 × 85?", '[call] calculator({"expression": "47 * 85"})', "[result] 3995", "47 × 85 = 3995."]
    assert "# Tools" in seen[0] and '"name": "lookup"' in seen[0]
    assert "cannot be combined with --raw" in one_error_line(capsys, ["chat", "--model", str(model_dir), "--tools", "--raw", "--prompt", "hi"])
