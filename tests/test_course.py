"""`minimind course`'s scheduler on a toy course: stages start from the model of the stage their `init_from` default
names, a stage others wait for runs first and alone on every core, the rest run beside each other on one thread,
and a failed stage skips the stages that start from it."""
import argparse, json, os

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from minimind.cli import run_course, starts_from


def toy_notebook(path, params: str, body: str):
    "A notebook with a `parameters` cell and one cell that does the stage's work."
    cell = new_code_cell(params); cell.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[cell, new_code_cell(body)],
                      metadata={"kernelspec": {"name": "python3", "display_name": "python3", "language": "python"}})
    nbformat.write(nb, path)


RECORD = """import json, os, time
from pathlib import Path
out = Path(run_dir); out.mkdir(parents=True, exist_ok=True)
t0 = time.time(); time.sleep(2.5)
{work}
(out/"record.json").write_text(json.dumps({{"start": t0, "end": time.time(), "threads": os.environ.get("OMP_NUM_THREADS"), "init_from": init_from}}))"""


def toy_course(root, fail_base=False):
    "nbs/ with 00_side (starts from nothing), 03_base (writes a model folder), 04_next (starts from 03_base's model)."
    (root/"nbs").mkdir(); (root/"dataset").mkdir()
    toy_notebook(root/"nbs/00_side.ipynb", 'run_dir = "../runs/00_side"\ninit_from = None', RECORD.format(work="pass"))
    base = ('raise RuntimeError("the base stage broke")' if fail_base else
            '(out/"model").mkdir(exist_ok=True); (out/"model"/"config.json").write_text("{}")')
    toy_notebook(root/"nbs/03_base.ipynb", 'run_dir = "../runs/03_base"\ninit_from = None\ndevice = "cpu"', RECORD.format(work=base))
    toy_notebook(root/"nbs/04_next.ipynb", 'run_dir = "../runs/04_next"\ninit_from = "../runs/03_base/model"',
                 RECORD.format(work='assert Path(init_from, "config.json").exists(), init_from'))


def course_args(out, jobs=2):
    return argparse.Namespace(out=str(out), only=[], steps=None, jobs=jobs, threads=1, no_chat=True)


def test_starts_from_reads_init_from_defaults(tmp_path):
    toy_course(tmp_path)
    nbs = tmp_path/"nbs"
    assert [starts_from(nbs/f"{s}.ipynb") for s in ("00_side", "03_base", "04_next")] == ["04_sft", "04_sft", "03_base"]
    toy_notebook(nbs/"05_plain.ipynb", 'run_dir = "../runs/05_plain"', "pass")
    assert starts_from(nbs/"05_plain.ipynb") is None                      # no init_from: starts from nothing


def test_course_schedules_by_model(tmp_path, monkeypatch, capsys):
    toy_course(tmp_path); monkeypatch.chdir(tmp_path)
    out = tmp_path/"runs"
    assert run_course(course_args(out)) == 0
    rec = {s: json.loads((out/s/"record.json").read_text()) for s in ("00_side", "03_base", "04_next")}
    # 03_base is waited for, so it ran first and alone, on every core; the others ran after it, one thread each
    assert rec["03_base"]["end"] <= min(rec["00_side"]["start"], rec["04_next"]["start"])
    assert rec["03_base"]["threads"] == str(os.cpu_count()) and rec["00_side"]["threads"] == "1"
    assert rec["04_next"]["init_from"] == str(out/"03_base"/"model")
    # 00_side and 04_next, both ready once 03_base ended, ran beside each other with --jobs 2
    assert max(rec["00_side"]["start"], rec["04_next"]["start"]) < min(rec["00_side"]["end"], rec["04_next"]["end"])
    assert "total (--jobs 2)" in capsys.readouterr().out


def test_failed_stage_skips_its_dependents(tmp_path, monkeypatch, capsys):
    toy_course(tmp_path, fail_base=True); monkeypatch.chdir(tmp_path)
    out = tmp_path/"runs"
    assert run_course(course_args(out)) == 1
    printed = capsys.readouterr()
    assert "04_next.ipynb skipped: 03_base failed" in printed.out
    assert "the base stage broke" in printed.err and str(out/"03_base.log") in printed.err
    assert (out/"00_side"/"record.json").exists() and not (out/"04_next").exists()
