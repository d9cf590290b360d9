"""Every notebook runs top to bottom under papermill (cwd nbs/), once, with the short overrides of
`NB_TEST_PARAMS`: the overrides reach the notebook, its outputs land in the run_dir the test gives it, and a
training stage's measured outcome clears its floor in `OUTCOME_FLOORS`."""
import json
import time
import uuid
from pathlib import Path

import nbformat
import pytest

from conftest import (LOWER_IS_BETTER, NB_TEST_PARAMS, NBS, NO_PARAMETERS, OUTCOME_FLOORS, OUTCOME_KEYS, SHARED_MODELS, course_notebooks,
                      nb_id)

NOTEBOOKS = course_notebooks()
PROBE = "mm_papermill_probe"  # an extra parameter papermill injects; the probe cell prints it back


def parameters_cells(nb: nbformat.NotebookNode) -> list:
    "The cells tagged `parameters` (papermill injects its overrides right after the first one)."
    return [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=nb_id)
def test_one_parameters_cell(nb):
    "Exactly one code cell tagged `parameters`, with at least one parameter (index has nothing to tune)."
    import papermill
    cells = parameters_cells(nbformat.read(nb, as_version=4))
    if nb.name in NO_PARAMETERS:
        assert not cells, f"{nb.name} is listed as having no parameters cell but has {len(cells)}"
        return
    assert len(cells) == 1, (f"{nb.name} has {len(cells)} cells tagged 'parameters'; it needs exactly one "
                             "(CPU defaults, one literal per line) so papermill and the tests can override it")
    assert cells[0].cell_type == "code"
    assert papermill.inspect_notebook(str(nb)), f"{nb.name}: papermill finds no parameter in its parameters cell"


def test_test_params_name_real_notebooks_and_parameters():
    "Every override in NB_TEST_PARAMS is a parameter its notebook declares (a typo would silently run the defaults)."
    import papermill
    stems = {nb.stem: nb for nb in NOTEBOOKS}
    for stem, params in {**NB_TEST_PARAMS, **{k: {} for k in OUTCOME_FLOORS}}.items():
        assert stem in stems, f"conftest names {stem}, which is not a notebook"
        declared = papermill.inspect_notebook(str(stems[stem]))
        unknown = set(params) - set(declared)
        assert not unknown, f"{stem}: {sorted(unknown)} are not parameters of the notebook"


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


def check_floors(stem: str, run_dir: Path):
    "The outcome the notebook recorded carries its stable keys (OUTCOME_KEYS[stem]) and clears the floors of OUTCOME_FLOORS[stem]."
    floors, keys = OUTCOME_FLOORS.get(stem), OUTCOME_KEYS.get(stem)
    if not floors and not keys: return
    path = run_dir / "outcome.json"
    assert path.exists(), f"{stem} has outcome floors or keys but wrote no {path.name}"
    recorded = json.loads(path.read_text(encoding="utf-8"))["rows"]
    have = [r["key"] for r in recorded if "key" in r]
    assert len(have) == len(set(have)), f"{stem}: a key is used twice: {have}"
    assert not set(keys or ()) - set(have), f"{stem}: outcome rows lack the keys {sorted(set(keys) - set(have))}; it has {have}"
    rows = {r["metric"]: r for r in recorded}
    for metric, (bound, gain) in (floors or {}).items():
        assert metric in rows, f"{stem}: outcome has no metric {metric!r}; it has {sorted(rows)}"
        before, after = rows[metric].get("before"), rows[metric]["after"]
        if any(w in metric for w in LOWER_IS_BETTER):
            assert after <= bound, f"{stem}: {metric} = {after:.4g}, above the ceiling {bound}"
            if gain is not None: assert before - after >= gain, f"{stem}: {metric} fell {before - after:.4g} ({before:.4g} -> {after:.4g}), less than {gain}"
        else:
            assert after >= bound, f"{stem}: {metric} = {after:.4g}, below the floor {bound}"
            if gain is not None: assert after - before >= gain, f"{stem}: {metric} rose {after - before:.4g} ({before:.4g} -> {after:.4g}), less than {gain}"
    print(f"{stem} outcome: " + "; ".join(f"{m} {r.get('before')} -> {r['after']}" for m, r in rows.items()))


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=nb_id)
def test_notebook_runs(nb, tmp_path, nbs_untouched, record_property, request):
    "papermill (cwd nbs/) runs the notebook with its test overrides; they reach it and steer its outputs."
    import papermill
    params = papermill.inspect_notebook(str(nb))
    overrides = {**NB_TEST_PARAMS.get(nb.stem, {}), PROBE: uuid.uuid4().hex}
    wanted = {v[1:-1] for v in overrides.values() if isinstance(v, str) and v[1:-1] in SHARED_MODELS and v[0] + v[-1] == "{}"}
    if wanted:
        shared = request.getfixturevalue("shared_models")
        overrides = {k: shared[v[1:-1]] if isinstance(v, str) and v[1:-1] in wanted and v[0] + v[-1] == "{}" else v for k, v in overrides.items()}
    run_dir = tmp_path / "run_dir"
    if "run_dir" in params: overrides["run_dir"] = str(run_dir)
    src = probe_copy(nb, tmp_path / nb.name, [PROBE] + (["run_dir"] if "run_dir" in params else []))
    out = tmp_path / f"{nb.stem}.papermill.ipynb"
    t0, error = time.time(), None
    try:
        papermill.execute_notebook(str(src), str(out), parameters=overrides, cwd=str(NBS),
                                   progress_bar=False, log_output=False, request_save_on_cell_execute=False)
    except papermill.PapermillExecutionError as e: error = str(e)
    if error: pytest.fail(f"{nb.name} failed under papermill with {overrides}:\n{error}", pytrace=False)
    record_property("seconds", round(time.time() - t0, 1))

    executed = nbformat.read(out, as_version=4)
    seen = probe_values(executed)
    assert seen[PROBE] == overrides[PROBE], "the injected parameter did not reach the notebook's namespace"
    if nb.name in NO_PARAMETERS: return
    tags = [c.get("metadata", {}).get("tags", []) for c in executed.cells]
    i = next(k for k, t in enumerate(tags) if "parameters" in t)
    assert "injected-parameters" in tags[i + 1], "papermill did not inject its cell after the parameters cell"
    if "run_dir" in overrides:
        assert same_or_inside(seen["run_dir"], run_dir), (
            f"{nb.name} overwrote run_dir after the parameters cell: {seen['run_dir']!r}, not {run_dir}")
        written = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())
        assert written, f"{nb.name} declares run_dir but wrote nothing to the overridden run_dir {run_dir}"
        check_floors(nb.stem, run_dir)
