"""Every exercise can fail: in each notebook's committed outputs (the default run), the learner's cell, with its
placeholder answer, prints the check's "not yet: ..." message, and the folded solution after it calls the same check,
which raises unless the answer is right. The notebook tests run both cells under papermill: a solution that does not
pass its check fails them."""
import re

import nbformat
import pytest

from conftest import course_notebooks, nb_id

PLACEHOLDER = "# your code here"


def text_of(cell) -> str:
    "What a code cell printed or displayed as text."
    out = []
    for o in cell.get("outputs", []):
        out.append(o.get("text", "") if o.get("output_type") == "stream" else "".join(o.get("data", {}).get("text/plain", "")))
    return "".join(out)


def exercises(nb) -> list[tuple[int, int | None]]:
    "(learner cell, its solution cell or None) for each exercise after the notebook's '## Exercises' heading."
    start = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.startswith("## Exercises")), None)
    if start is None: return []
    cells = list(enumerate(nb.cells))[start + 1:]
    learners = [i for i, c in cells if c.cell_type == "code" and PLACEHOLDER in c.source and "#| code-fold" not in c.source]
    pairs = []
    for k, i in enumerate(learners):
        end = learners[k + 1] if k + 1 < len(learners) else len(nb.cells)
        sol = next((j for j, c in cells if i < j < end and c.cell_type == "code" and "#| code-fold: true" in c.source), None)
        pairs.append((i, sol))
    return pairs


WITH_EXERCISES = [p for p in course_notebooks() if exercises(nbformat.read(p, as_version=4))]


def test_the_course_has_exercises():
    "Every stage notebook from 00 to 10 ends with exercises (the index and the CLI notebook are not lessons)."
    stems = {p.stem for p in WITH_EXERCISES}
    missing = [p.stem for p in course_notebooks() if p.stem[:2].isdigit() and not p.stem.startswith("99") and p.stem not in stems]
    assert not missing, f"notebooks without an exercise whose answer cell holds {PLACEHOLDER!r}: {missing}"


@pytest.mark.parametrize("nb", WITH_EXERCISES, ids=nb_id)
def test_every_exercise_has_a_check_that_fails_and_a_solution_that_passes(nb):
    book = nbformat.read(nb, as_version=4)
    problems = []
    for i, sol in exercises(book):
        first = book.cells[i].source.splitlines()[0]
        if "not yet:" not in text_of(book.cells[i]):
            problems.append(f"cell {i} ({first}): the placeholder answer printed no 'not yet: ...' (its check did not run, or cannot fail)")
        if sol is None: problems.append(f"cell {i} ({first}): no folded solution follows it"); continue
        checks = set(re.findall(r"\b(check_\w+)\(", book.cells[i].source)) - set(re.findall(r"def (check_\w+)\(", book.cells[i].source)) or \
                 set(re.findall(r"def (check_\w+)\(", book.cells[i].source))
        if not any(re.search(rf"\b{c}\(", book.cells[sol].source) for c in checks):
            problems.append(f"cell {sol} (solution to cell {i}): does not call the exercise's check ({', '.join(sorted(checks)) or 'none found'})")
    assert not problems, f"{nb.name}:\n" + "\n".join(problems)


def test_no_exercise_is_an_experiment_without_a_check():
    "An exercise that only says 'try this' teaches less than one whose answer is checked."
    offenders = [f"{p.name}: {c.source.splitlines()[0][:80]}" for p in course_notebooks() for c in nbformat.read(p, as_version=4).cells
                 if c.cell_type == "markdown" and "no check" in c.source]
    assert not offenders, offenders
