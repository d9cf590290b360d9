"""The package as a user gets it: a wheel built from this checkout, installed into a fresh virtualenv outside it, and
run from an empty folder with nothing of the checkout in sight. Offline and quick: the new venv borrows torch and the
other installed dependencies from the test venv through a .pth file, so installing the wheel downloads nothing."""
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement

from conftest import ROOT

# What a new user runs, in order, in one empty folder: (name, arguments after `minimind`, exit status, text that stdout
# or stderr must contain). Later stages add their rows (`train sft`, `train lora`, `serve`, `export`), after the
# commands whose output they start from.
COMMANDS = [
    ("train pretrain", ["train", "pretrain", "--preset", "tiny", "--steps", "3", "--out", "run", "--device", "cpu", "--no-progress"],
     0, "step 3: train loss"),
    ("chat", ["chat", "--model", "run/model", "--raw", "--prompt", "The colour of", "--max-new-tokens", "8", "--temperature", "0",
              "--device", "cpu"], 0, "> The colour of"),
    ("sample", ["sample", "--out", "data"], 0, "wrote 13 files"),
    ("course needs the checkout", ["course"], 1, "git clone https://github.com/minimind-course/minimind"),
]
# The wheel holds the package and its metadata only; these must be in it.
MUST_CARRY = ["minimind/assets/tokenizer/tokenizer.json", "minimind/assets/tokenizer/tokenizer_config.json", "minimind/cli.py"]
NOT_PACKAGED = ("nbs", "tests", "runs", "dataset", "bench")  # checkout folders whose files must stay out of the wheel
SKIP_COPY = shutil.ignore_patterns(".git", ".venv", "runs", "test-output", "build", "dist", "*.egg-info", "__pycache__",
                                   "_docs", "_proc", ".pytest_cache", ".quarto", "wandb")


def build_wheel(tmp: Path) -> Path:
    "Build the wheel offline from a copy of the checkout (the build writes build/ and *.egg-info there, not here)."
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=SKIP_COPY)
    (src / "runs" / "03_pretrain").mkdir(parents=True)  # a run folder as a learner's checkout has one: must not be packaged
    (src / "runs" / "03_pretrain" / "loss.png").write_bytes(b"not a package file")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(tmp / "dist"), str(src)], check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = (tmp / "dist").glob("minimind-*.whl")
    return wheel


def fresh_venv(tmp: Path) -> Path:
    "A new venv whose own site-packages comes first; a .pth adds the test venv's (torch and the rest, not minimind)."
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # A plain path line: those folders join sys.path, but their own .pth files (the editable install of this checkout)
    # are not processed, so `import minimind` can only find the installed wheel.
    deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "_test_venv_packages.pth").write_text("".join(f"{p}\n" for p in deps))
    return py


def user_env(tmp: Path, venv_py: Path) -> dict:
    "A new user's environment: the venv's bin on PATH, an empty home, the minimind cache in a temp folder, offline."
    keep = {k: os.environ[k] for k in ("LANG", "LC_ALL", "TMPDIR") if k in os.environ}
    return {**keep, "PATH": f"{venv_py.parent}:/usr/bin:/bin", "HOME": str(tmp / "home"), "MINIMIND_CACHE": str(tmp / "cache"),
            "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def test_wheel_installed_outside_the_checkout(tmp_path, record_property):
    t0 = time.time()
    wheel = build_wheel(tmp_path)
    t_build = time.time() - t0
    names = zipfile.ZipFile(wheel).namelist()
    dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
    assert all(n.split("/")[0] in ("minimind", dist_info) for n in names), \
        f"the wheel holds more than the package: {[n for n in names if n.split('/')[0] not in ('minimind', dist_info)]}"
    stray = [n for n in names if set(Path(n).parts) & set(NOT_PACKAGED) or n.endswith((".ipynb", ".pyc"))]
    assert not stray, f"checkout files in the wheel: {stray}"
    assert not [f for f in MUST_CARRY if f not in names], f"the wheel lacks {[f for f in MUST_CARRY if f not in names]}"
    modules = {f"minimind/{p.name}" for p in (ROOT / "minimind").glob("*.py")}
    assert modules <= set(names), f"modules missing from the wheel: {sorted(modules - set(names))}"
    meta = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
    torch_req = [l for l in meta.splitlines() if l.startswith("Requires-Dist: torch")]
    assert torch_req and "==" not in torch_req[0], f"the wheel pins torch for every user: {torch_req}"
    assert "minimind = minimind.cli:main" in zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()

    # Every runtime requirement in the wheel's metadata is met by what the test venv has (so `pip install` of the wheel
    # beside torch 2.13.0 installs nothing more); checked here in-process, as pip's own resolution takes ~10 s.
    reqs = [Requirement(l.split(":", 1)[1]) for l in meta.splitlines() if l.startswith("Requires-Dist:")]
    unmet = [str(q) for q in reqs if (q.marker is None or q.marker.evaluate({"extra": ""})) and not q.specifier.contains(version(q.name), prereleases=True)]
    assert not unmet, f"the installed versions do not satisfy the wheel's requirements: {unmet}"

    py = fresh_venv(tmp_path)
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-index", "--no-deps", str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"installing the wheel into a fresh venv failed:\n{r.stdout}\n{r.stderr}"
    t_install = time.time() - t0 - t_build

    work, env = tmp_path / "empty", user_env(tmp_path, py)
    work.mkdir(); (tmp_path / "home").mkdir()
    r = subprocess.run([str(py), "-c", "import minimind.cli; print(minimind.cli.__file__)"], cwd=work, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and Path(r.stdout.strip()).is_relative_to(tmp_path / "venv"), f"minimind imported from elsewhere: {r}"

    timings, minimind = [], py.parent / "minimind"
    for name, argv, status, expect in COMMANDS:
        t = time.time()
        r = subprocess.run([str(minimind), *argv], cwd=work, env=env, capture_output=True, text=True, timeout=300)
        timings.append(f"{time.time() - t:5.1f} s  minimind {' '.join(argv)}")
        out = r.stdout + r.stderr
        assert r.returncode == status, f"`minimind {' '.join(argv)}` ({name}) exited {r.returncode}, not {status}:\n{out[-3000:]}"
        assert expect in out, f"`minimind {' '.join(argv)}` ({name}) did not print {expect!r}:\n{out[-3000:]}"
        if status:  # a user's mistake: one line, no traceback
            assert "Traceback" not in out and len(r.stderr.strip().splitlines()) == 1, f"{name}: not one line:\n{r.stderr}"
        if name == "train pretrain":  # the bundled sample was generated into the cache, once, saying where
            sample = tmp_path / "cache" / f"sample-{dist_info.removesuffix('.dist-info').split('-')[1]}"
            assert f"generated the bundled sample (make_sample, seed 0) in {sample}" in r.stderr, r.stderr[-2000:]
            committed = sorted(p.name for p in (ROOT / "dataset").glob("*.jsonl"))
            assert sorted(p.name for p in sample.iterdir()) == committed
            for f in committed: assert (sample / f).read_bytes() == (ROOT / "dataset" / f).read_bytes(), f"{f} differs from dataset/{f}"
    assert sorted(p.name for p in work.iterdir()) == ["data", "run"], "the commands wrote outside their --out folders"

    record_property("seconds", round(time.time() - t0, 1))
    size = wheel.stat().st_size
    print(f"\nwheel {wheel.name}: {size / 1e3:.0f} kB, {len(names)} files; build {t_build:.1f} s, install {t_install:.1f} s")
    print("\n".join(timings))
