"""Every notebook runs headlessly with its tiny defaults (nbdev's runner), and its `parameters` cell works
under papermill: an override reaches the notebook and its outputs land where the override points."""
import contextlib
import io
import json
import sys
import uuid
from pathlib import Path

import nbformat
import pytest

import nbdev.test as nbt  # module import: `from nbdev.test import test_nb` would make pytest collect it
from nbdev.config import get_config

from conftest import NBS, NO_PARAMETERS, course_notebooks, nb_id

NOTEBOOKS = course_notebooks()
PROBE = "mm_papermill_probe"  # an extra parameter papermill injects; the probe cell prints it back


def parameters_cells(nb: nbformat.NotebookNode) -> list:
    "The cells tagged `parameters` (papermill injects its overrides right after the first one)."
    return [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]


@contextlib.contextmanager
def real_stderr_captured():
    "nbdev's test_nb writes a failing cell's traceback to `sys.__stderr__`: capture it for the report."
    buf, saved = io.StringIO(), sys.__stderr__
    sys.__stderr__ = buf
    try: yield buf
    finally: sys.__stderr__ = saved


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=nb_id)
def test_notebook_runs(nb, nbs_untouched, record_property):
    "The notebook runs top to bottom under nbdev's runner (as `nbdev-test` does), cwd = nbs/."
    cfg = get_config(nb.parent)
    skip_flags = cfg.tst_flags.split() if isinstance(cfg.tst_flags, str) else list(cfg.tst_flags or [])
    with real_stderr_captured() as err:
        ok, secs = nbt.test_nb(nb, skip_flags=skip_flags, basepath=cfg.config_path, cell_timeout=600)
    record_property("seconds", round(secs, 1))
    print(f"{nb.name}: {secs:.1f} s")
    assert ok, f"{nb.name} failed under nbdev's test_nb:\n{err.getvalue()}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=nb_id)
def test_one_parameters_cell(nb):
    "Exactly one code cell tagged `parameters`, with at least one parameter (index has nothing to tune)."
    import papermill
    cells = parameters_cells(nbformat.read(nb, as_version=4))
    if nb.name in NO_PARAMETERS:
        assert not cells, f"{nb.name} is listed as having no parameters cell but has {len(cells)}"
        return
    assert len(cells) == 1, (f"{nb.name} has {len(cells)} cells tagged 'parameters'; it needs exactly one "
                             "(tiny CPU defaults, one literal per line) so papermill and the tests can override it")
    assert cells[0].cell_type == "code"
    assert papermill.inspect_notebook(str(nb)), f"{nb.name}: papermill finds no parameter in its parameters cell"


def probe_copy(nb: Path, dst: Path, names: list) -> Path:
    "A copy of `nb` with a last cell that prints the final values of `names` as JSON."
    book = nbformat.read(nb, as_version=4)
    code = ("import json as _mm_json\n"
            f"print('MM_PROBE ' + _mm_json.dumps({{k: str(globals().get(k)) for k in {names!r}}}))")
    book.cells.append(nbformat.v4.new_code_cell(code))
    nbformat.write(book, dst)
    return dst


def probe_values(executed: nbformat.NotebookNode) -> dict:
    "The JSON that the probe cell printed."
    for out in executed.cells[-1].get("outputs", []):
        for line in out.get("text", "").splitlines():
            if line.startswith("MM_PROBE "): return json.loads(line[len("MM_PROBE "):])
    raise AssertionError("the probe cell printed nothing")


def same_or_inside(value: str, target: Path) -> bool:
    "Whether the path `value` (absolute, or relative to nbs/) is `target` or lies inside it."
    p = (NBS / value).resolve()
    return p == target.resolve() or target.resolve() in p.parents


PARAM_NOTEBOOKS = [nb for nb in NOTEBOOKS if nb.name not in NO_PARAMETERS]


@pytest.mark.parametrize("nb", PARAM_NOTEBOOKS, ids=nb_id)
def test_papermill_override(nb, tmp_path, nbs_untouched, record_property):
    "papermill (cwd nbs/) runs the notebook with overrides; they reach the notebook and steer its outputs."
    import time
    import papermill
    params = papermill.inspect_notebook(str(nb))  # {} without a parameters cell: test_one_parameters_cell fails
    overrides = {PROBE: uuid.uuid4().hex}
    run_dir = tmp_path / "run_dir"
    if "run_dir" in params: overrides["run_dir"] = str(run_dir)
    src = probe_copy(nb, tmp_path / nb.name, list(overrides))
    out = tmp_path / f"{nb.stem}.papermill.ipynb"
    t0 = time.time()
    error = None
    try:
        papermill.execute_notebook(str(src), str(out), parameters=overrides, cwd=str(NBS),
                                   progress_bar=False, log_output=False, request_save_on_cell_execute=False)
    except papermill.PapermillExecutionError as e: error = str(e)
    if error: pytest.fail(f"{nb.name} failed under papermill with {overrides}:\n{error}", pytrace=False)
    record_property("seconds", round(time.time() - t0, 1))

    executed = nbformat.read(out, as_version=4)
    tags = [c.get("metadata", {}).get("tags", []) for c in executed.cells]
    i = next((k for k, t in enumerate(tags) if "parameters" in t), -1)  # papermill injects at the top without one
    assert "injected-parameters" in tags[i + 1], "papermill did not inject its cell after the parameters cell"
    seen = probe_values(executed)
    assert seen[PROBE] == overrides[PROBE], "the injected parameter did not reach the notebook's namespace"
    if "run_dir" in overrides:
        assert same_or_inside(seen["run_dir"], run_dir), (
            f"{nb.name} overwrote run_dir after the parameters cell: {seen['run_dir']!r}, not {run_dir}")
        written = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())
        assert written, f"{nb.name} declares run_dir but wrote nothing to the overridden run_dir {run_dir}"
        print(f"{nb.name} wrote to run_dir: {written[:10]}")
