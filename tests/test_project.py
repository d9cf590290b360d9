"""The project's shape: nbdev 3 config in pyproject.toml, notebooks that export existing modules, and a docs
site whose config parses, whose notebook processing (what `nbdev-docs` does before quarto) works, and which, where
quarto is installed (CI installs it), builds with every notebook's page, figures and attention map in place."""
import importlib
import re
import shutil
import subprocess
import time
import tomllib

import nbformat
import pytest
import yaml

from conftest import NBS, NO_EXPORT, ROOT, course_notebooks, nb_id

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
NBDEV = PYPROJECT.get("tool", {}).get("nbdev", {})
NOTEBOOKS = course_notebooks()
EXPORTING = [nb for nb in NOTEBOOKS if nb.name not in NO_EXPORT]


def test_nbdev3_config_in_pyproject():
    "nbdev 3 reads [tool.nbdev]; an old settings.ini stops it, and setup.py is gone with nbdev 2."
    assert NBDEV, "pyproject.toml has no [tool.nbdev] table"
    assert NBDEV.get("lib_path") == "minimind" and NBDEV.get("nbs_path") == "nbs"
    assert "tags" in NBDEV.get("allowed_cell_metadata_keys", []), \
        "without allowed_cell_metadata_keys = ['tags'], nbdev-clean deletes papermill's `parameters` tag"
    for old in ("settings.ini", "setup.py"): assert not (ROOT / old).exists(), f"{old} must not exist with nbdev 3"


def requirement_lists():
    "Every requirement list in pyproject.toml: the runtime dependencies and each optional extra."
    proj = PYPROJECT["project"]
    yield "dependencies", proj.get("dependencies", [])
    for name, reqs in proj.get("optional-dependencies", {}).items(): yield f"optional-dependencies.{name}", reqs


TEST_TORCH = "2.13.0"  # the CPU build that pip takes from local disk; a newer or unpinned torch pulls a multi-GB CUDA build


def constraints() -> dict:
    "constraints.txt as {name: requirement}: the exact versions `make install` holds the test environment to."
    from packaging.requirements import Requirement
    lines = [l.split("#")[0].strip() for l in (ROOT / "constraints.txt").read_text().splitlines()]
    return {(r := Requirement(l)).name.lower(): r for l in lines if l}


def test_torch_range_for_users_pinned_for_tests():
    "pip install minimind accepts a torch range (a library lives beside other packages); the test command pins 2.13.0."
    from packaging.requirements import Requirement
    torch_reqs = [(where, Requirement(r)) for where, reqs in requirement_lists() for r in reqs if Requirement(r).name.lower() == "torch"]
    assert torch_reqs, "torch is not a dependency"
    for where, r in torch_reqs:
        assert not [s for s in r.specifier if s.operator in ("==", "===")], f"{where}: {r} pins torch exactly; declare a range, pin in constraints.txt"
        assert [s for s in r.specifier if s.operator in (">=", ">", "~=")], f"{where}: {r} has no lower bound"
        assert r.specifier.contains(TEST_TORCH), f"{where}: {r} excludes the torch the tests run ({TEST_TORCH})"
    pin = constraints().get("torch")
    assert pin is not None and str(pin.specifier) == f"=={TEST_TORCH}", f"constraints.txt must pin torch=={TEST_TORCH}, has {pin}"
    installs = [l for l in (ROOT / "Makefile").read_text().splitlines() if "pip install" in l and not l.lstrip().startswith("#")]
    assert installs and all("-c constraints.txt" in l for l in installs), f"a pip install in the Makefile ignores constraints.txt: {installs}"


def default_exp(nb) -> list[str]:
    "The module names given by the notebook's `#| default_exp` directives."
    book = nbformat.read(nb, as_version=4)
    return [m.group(1) for c in book.cells if c.cell_type == "code"
            for m in re.finditer(r"^#\|\s*default_exp\s+(\S+)", c.source, re.M)]


@pytest.mark.parametrize("nb", EXPORTING, ids=nb_id)
def test_notebook_exports_its_module(nb):
    "One `#| default_exp`, a generated module file that points back to this notebook, and it imports."
    mods = default_exp(nb)
    assert len(mods) == 1, f"{nb.name} needs exactly one `#| default_exp` (found {mods})"
    path = ROOT / NBDEV.get("lib_path", "minimind") / (mods[0].replace(".", "/") + ".py")
    assert path.exists(), f"{nb.name} exports {path.relative_to(ROOT)}, which does not exist: run nbdev-export"
    head = path.read_text().splitlines()[:8]
    assert any(f"nbs/{nb.relative_to(NBS).as_posix()}" in line for line in head), \
        f"{path.relative_to(ROOT)} does not say it is generated from {nb.name}"
    importlib.import_module(f"minimind.{mods[0]}")


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=nb_id)
def test_notebook_kernel_and_title(nb):
    "papermill and JupyterLab start the notebook's kernelspec: python3; the docs page takes the `# Title`."
    book = nbformat.read(nb, as_version=4)
    assert book.metadata.get("kernelspec", {}).get("name") == "python3", f"{nb.name}: kernelspec must be python3"
    first = book.cells[0]
    assert first.cell_type == "markdown" and first.source.lstrip().startswith("# "), f"{nb.name}: no `# Title` first"


def test_quarto_config():
    "nbs/_quarto.yml and nbs/nbdev.yml parse and carry what quarto needs to build the site."
    q = yaml.safe_load((NBS / "_quarto.yml").read_text())
    assert q["project"]["type"] == "website"
    assert "nbdev.yml" in q.get("metadata-files", [])
    css = q.get("format", {}).get("html", {}).get("css")
    if css: assert (NBS / css).exists(), f"_quarto.yml names {css}, which is missing"
    n = yaml.safe_load((NBS / "nbdev.yml").read_text())
    assert n["project"]["output-dir"] == NBDEV.get("doc_path", "_docs")
    for key in ("title", "site-url", "repo-url"): assert n["website"].get(key), f"nbdev.yml lacks website.{key}"


@pytest.fixture
def project_copy(tmp_path, monkeypatch):
    "A copy of pyproject.toml, nbs/ and minimind/ in a temp dir, as cwd: docs processing writes beside them."
    for name in ("pyproject.toml", "README.md"): shutil.copy2(ROOT / name, tmp_path / name)
    for name in ("nbs", NBDEV.get("lib_path", "minimind")):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IN_TEST", "1")  # nbdev's doc processor deletes IN_TEST when done; restored afterwards
    return tmp_path


def test_nbdev_yml_is_what_nbdev_docs_writes(project_copy):
    "`nbdev-docs` regenerates nbs/nbdev.yml from pyproject.toml: the committed one must already equal it."
    from nbdev.quarto import refresh_quarto_yml
    refresh_quarto_yml()
    committed, generated = (NBS / "nbdev.yml").read_text(), (project_copy / "nbs" / "nbdev.yml").read_text()
    assert committed == generated, ("`make docs` would rewrite the tracked nbs/nbdev.yml; commit nbdev's version:\n"
                                    + generated)


def test_docs_processing_without_quarto(project_copy):
    "The step `nbdev-docs` runs before quarto: every notebook processed into _proc/, hidden cells removed."
    from nbdev.doclinks import _build_modidx
    from nbdev.quarto import nbdev_sidebar, refresh_quarto_yml
    from nbdev.serve import proc_nbs
    nbs = project_copy / "nbs"
    refresh_quarto_yml()
    _build_modidx()
    nbdev_sidebar.__wrapped__(path=nbs)
    failed = {}
    for nb in NOTEBOOKS:  # one at a time, so that every notebook that breaks the docs build is reported
        try: cache = proc_nbs(str(nbs), n_workers=0, file_glob=nb.name)
        except Exception as e: failed[nb.name] = str(e)[:1500]
    assert not failed, ("nbdev's docs processing runs every cell that holds an import (and every export cell) "
                        "without the cells between them; keep imports in import cells:\n"
                        + "\n\n".join(f"{k}: {v}" for k, v in failed.items()))
    assert cache == project_copy / "_proc"
    sidebar = (nbs / "sidebar.yml").read_text()
    for nb in NOTEBOOKS:
        rel = nb.relative_to(NBS).as_posix()
        assert rel in sidebar, f"{rel} missing from the generated sidebar"
        proc = cache / rel
        assert proc.exists(), f"{rel} was not processed"
        src, out = nbformat.read(nb, as_version=4), nbformat.read(proc, as_version=4)
        hidden = [c for c in src.cells if re.search(r"^#\|\s*hide\s*$", c.source, re.M)]
        nbdev_only = r"^#\|\s*(hide|export\w*|default_exp)\b"  # quarto's own `#| echo:` etc. stay, by design
        leftover = [c.source[:60] for c in out.cells if re.search(nbdev_only, c.source, re.M)]
        assert not leftover, f"{rel}: nbdev directives left in the processed notebook: {leftover}"
        # nbdev adds show_doc cells for exported names, so compare contents, not counts
        shown = [c for c in hidden if any(c.source.split("\n", 1)[-1].strip() and
                                          c.source.split("\n", 1)[-1].strip() in o.source for o in out.cells)]
        assert not shown, f"{rel}: hidden cells reached the page: {[c.source[:60] for c in shown]}"
        front = out.cells[0]
        assert front.cell_type == "raw" and "title:" in front.source, f"{rel}: no title in the page's front matter"


def page_of(nb, proc) -> str:
    "The site page of notebook `nb`: nbdev names it in the processed notebook's front matter (`output-file`)."
    front = nbformat.read(proc / nb.relative_to(NBS), as_version=4).cells[0].source
    page = re.search(r"^output-file:\s*(\S+)", front, re.M)
    return (nb.relative_to(NBS).parent / (page.group(1) if page else nb.with_suffix(".html").name)).as_posix()


def shown_figures(nb) -> int:
    "Image outputs of the cells a page shows (not `#| hide`, not `#| echo: false` without output, ...)."
    book = nbformat.read(nb, as_version=4)
    return sum(1 for c in book.cells if c.cell_type == "code" and not re.search(r"^#\|\s*(hide|include:\s*false|output:\s*false)", c.source, re.M)
               for o in c.get("outputs", []) if "image/png" in o.get("data", {}))


FALLBACKS = ("VBox(children=", "HBox(children=", "IntSlider(value=", "FloatLogSlider(value=", "Output(outputs=")  # a widget shown as text
ATTENTION_MAP = "#fig-attention-maps"  # the labelled figure of all attention maps in 01_attention_rope


@pytest.mark.skipif(shutil.which("quarto") is None, reason="quarto is not on PATH (.ci/run installs it with ../shared/quarto/install.sh)")
def test_docs_site(project_copy, record_property):
    """`nbdev-docs` renders the site: a page per notebook, every figure of a notebook an image on its page, no Python
    traceback and no widget shown as text on any page, and Chromium shows the attention map on the attention page."""
    nbdev_docs = ROOT / ".venv" / "bin" / "nbdev-docs"
    t0 = time.time()
    # --n-workers 1: one quarto process renders every page; two each pay quarto's start-up and take twice as long on 2 cores
    r = subprocess.run([str(nbdev_docs) if nbdev_docs.exists() else "nbdev-docs", "--n-workers", "1"], cwd=project_copy,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"nbdev-docs failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    record_property("seconds", round(time.time() - t0, 1))
    site, proc = project_copy / NBDEV.get("doc_path", "_docs"), project_copy / "_proc"
    assert (site / "index.html").exists()
    bad = []
    for nb in NOTEBOOKS:
        page = site / page_of(nb, proc)
        if not page.exists(): bad.append(f"{nb.name}: no page {page.relative_to(site)}"); continue
        html = page.read_text(encoding="utf-8")
        figs = [src for src in re.findall(r'<img[^>]+src="([^"]+)"', html) if "figure-html" in src]
        missing = [src for src in figs if not (page.parent / src).exists()]
        want = shown_figures(nb)
        if len(figs) < want or missing: bad.append(f"{nb.name}: {len(figs)} figures on the page for {want} image outputs; missing files {missing[:3]}")
        text = re.sub(r"<script.*?</script>", "", html, flags=re.S)  # widget state is JSON in a script, not page text
        if "Traceback (most recent call last)" in text or "cell-output-error" in text: bad.append(f"{nb.name}: a Python traceback on the page")
        shown = [f for f in FALLBACKS if f in text]
        if shown: bad.append(f"{nb.name}: widget fallback text {shown} on the page")
    for extra in sorted(site.rglob("*.md")):  # alternate formats of the pages, if the config renders any
        shown = [f for f in FALLBACKS if f in extra.read_text(encoding="utf-8")]
        if shown: bad.append(f"{extra.relative_to(site)}: widget fallback text {shown}")
    assert not bad, "\n".join(bad)

    from test_browser import CHROMEDRIVER, CHROMIUM, png_pixels, screenshot_of, start_chrome
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()): pytest.skip("site checked; no Chromium for the screenshot (`make browser`)")
    attention = next(nb for nb in NOTEBOOKS if nb.stem == "01_attention_rope")
    driver = start_chrome(project_copy / "chrome-profile")
    try: el, png = screenshot_of(driver, (site / page_of(attention, proc)).as_uri(), ATTENTION_MAP, "docs_attention_maps.png")
    finally: driver.quit()
    px = png_pixels(png)
    assert px.shape[0] > 200 and px.shape[1] > 300, f"the attention map is drawn {px.shape[1]}x{px.shape[0]} px"
    colours = len({tuple(c) for c in px.reshape(-1, 3)[:: max(1, px.size // 3 // 50_000)]})
    assert colours > 50 and px.std() > 20, f"the screenshot looks blank ({colours} colours, std {px.std():.1f})"
