"""The package is laid in floors, and a module imports only what lies below it: core <- train <- score <- stages <- apps.
Within a floor the modules are in order too (the order the course builds them, or their dependency order), and a
module imports only earlier ones. That is a strict order over all modules, so a circle cannot happen. The test reads
every `import` in every module with `ast` — at the top or inside a function, absolute or relative — because an
import hidden in a function is still a dependency."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "minimind"
FLOORS = [  # lowest first; within a floor, a module may import the ones listed before it
    ("core", ["data", "tokenizer", "moe", "model"]),  # moe before model: the model builds MoE blocks, handing in its FeedForward
    ("train", ["train"]),
    ("score", ["score"]),
    ("stages", ["sft", "lora", "dpo", "reason", "tools", "distill"]),
    ("apps", ["serve", "webui", "export", "cli"]),
]
RANK = {m: (f, i) for f, (_, mods) in enumerate(FLOORS) for i, m in enumerate(mods)}
FLOOR = {m: name for name, mods in FLOORS for m in mods}
NOT_MODULES = {"__init__", "_modidx"}  # the version, and nbdev's index of names


def imported(src: str, module: str) -> list[tuple[int, str]]:
    "(line, minimind module) for every import of a minimind module in `src`, the source of minimind.`module`."
    out = []
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[1]) for a in node.names if a.name.startswith("minimind.")]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1: base = node.module                                   # from .train import x / from . import x
            elif node.module and (node.module == "minimind" or node.module.startswith("minimind.")): base = node.module[len("minimind."):] or None
            else: continue
            if base: out.append((node.lineno, base.split(".")[0]))
            else: out += [(node.lineno, a.name) for a in node.names if a.name not in ("__version__",)]
    return [(ln, m) for ln, m in out if m not in NOT_MODULES and m != module]


def violations(sources: dict) -> list[str]:
    "Every import that goes up a floor, or to a later module of its own floor; every module not placed on a floor."
    bad = []
    for mod, src in sorted(sources.items()):
        if mod not in RANK: bad.append(f"minimind/{mod}.py is on no floor: add it to FLOORS in tests/test_layers.py"); continue
        for line, dep in imported(src, mod):
            if dep not in RANK: bad.append(f"minimind/{mod}.py:{line} imports minimind.{dep}, which is on no floor"); continue
            if RANK[dep] > RANK[mod]:
                where = "a higher floor" if FLOOR[dep] != FLOOR[mod] else "a later module of its own floor"
                bad.append(f"minimind/{mod}.py:{line} ({FLOOR[mod]}) imports minimind.{dep} ({FLOOR[dep]}): {where}")
    return bad


def package_sources() -> dict:
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted(PKG.glob("*.py")) if p.stem not in NOT_MODULES}


def test_every_module_imports_only_downwards():
    bad = violations(package_sources())
    assert not bad, "imports against the floors (core <- train <- score <- stages <- apps):\n" + "\n".join(bad)


def test_the_check_sees_hidden_and_relative_imports():
    "The rule catches what the package must not do: a stage importing the command line inside a function, a circle in core."
    srcs = {"sft": "from .train import Trainer\ndef chat():\n    from minimind.cli import stream_reply\n",
            "model": "import torch\ndef make():\n    import minimind.moe as m\n",
            "moe": "from minimind.model import FeedForward\n", "train": "from . import data\n"}
    bad = violations(srcs)
    assert any("sft.py:3" in b and "minimind.cli" in b for b in bad), bad
    assert any("moe.py:1" in b and "minimind.model" in b for b in bad), bad       # moe -> model breaks the order
    assert not any("model.py" in b for b in bad) and not any("train.py" in b for b in bad), bad
    assert violations({"newstage": "import os\n"}) == ["minimind/newstage.py is on no floor: add it to FLOORS in tests/test_layers.py"]


@pytest.mark.parametrize("mod", [m for _, mods in FLOORS for m in mods])
def test_floors_name_real_modules_or_planned_ones(mod):
    "A floor lists modules that exist (tools: the tools stage, once it lands)."
    assert (PKG / f"{mod}.py").exists() or mod == "tools", f"FLOORS names minimind.{mod}, which does not exist"
