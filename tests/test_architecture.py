"""The shape of the code: dependencies run one way, no import cycles, short functions, lint.

Every ``import edgeseg...`` counts, also those inside functions (they are lazy, not absent);
imports under ``if TYPE_CHECKING:`` do not (they never run).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "edgeseg"

# Lowest first: a module may import its own layer and the layers before it, never a later one.
LAYERS = [
    (
        "core",
        {"errors", "_io", "_lazy", "_config", "_redact", "_table", "spec", "device", "timing"},
    ),
    ("zoo", {"zoo"}),
    ("models", {"models"}),
    ("data", {"data"}),
    ("runtime", {"runtime"}),
    ("streaming", {"streaming"}),
    ("train", {"train"}),
    ("export", {"export"}),
    ("compress", {"compress"}),
    ("bench", {"bench"}),
    ("testing", {"testing"}),
    ("app", {"cli", "demo", "__main__", "__init__"}),
]
LAYER_OF = {part: i for i, (_, parts) in enumerate(LAYERS) for part in parts}
MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 250
LONG_FUNCTIONS_ALLOWED = {"edgeseg/data/synthetic.py"}  # procedural scene drawing
EXTENSIONS = {"edgeseg._cpu"}  # compiled (cpp_ext/cpu): imported, but no Python source


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(REPO).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The edgeseg modules ``path`` imports (``from a import b``: ``a.b`` when it is a module)."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    found = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("edgeseg"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("edgeseg"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                if sub not in EXTENSIONS:
                    found.add(sub if sub in modules else node.module)
    return {m for m in found if m in modules}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _layer(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    return LAYER_OF[top]


def test_every_module_has_a_layer():
    unplaced = sorted({m.split(".")[1] for m in _modules() if "." in m} - set(LAYER_OF))
    assert not unplaced, f"add {unplaced} to LAYERS in tests/test_architecture.py"


def test_dependencies_run_one_way():
    wrong = [
        f"{a} ({LAYERS[_layer(a)][0]}) imports {b} ({LAYERS[_layer(b)][0]})"
        for a, deps in _graph().items()
        for b in deps
        if _layer(b) > _layer(a)
    ]
    assert not wrong, "imports against the layer order:\n" + "\n".join(sorted(wrong))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert not _cycles(_graph())


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = _graph()
    graph["edgeseg.spec"] = graph["edgeseg.spec"] | {"edgeseg.streaming.pipeline"}
    assert any("edgeseg.spec" in c for c in _cycles(graph))


def test_functions_are_short():
    long = []
    for path in PACKAGE.rglob("*.py"):
        rel = str(path.relative_to(REPO))
        if rel in LONG_FUNCTIONS_ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{rel}:{node.lineno} {node.name} ({n} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def test_test_modules_have_unique_names():
    # tests/ folders are not packages: pytest imports each test file under its bare name, so two
    # files of one name break collection on a clean clone.
    seen: dict[str, list[str]] = {}
    for path in (REPO / "tests").rglob("test_*.py"):
        seen.setdefault(path.name, []).append(str(path.relative_to(REPO)))
    assert not {k: v for k, v in seen.items() if len(v) > 1}


@pytest.mark.skipif(
    shutil.which("ruff") is None, reason="ruff is not installed (pip install -e '.[dev]')"
)
@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]])
def test_ruff_is_clean(args):
    proc = subprocess.run(["ruff", *args], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]


def test_streaming_an_onnx_model_never_imports_pytorch_or_onnx(tiny_onnx, tmp_path):
    """PyTorch costs ~1.5 s and ~200 MB at start-up, the onnx package up to a second (its
    ml_dtypes import); an ONNX deployment must pay for neither."""
    import json

    code = (
        "import sys; from edgeseg.cli import main; "
        f"rc = main(['stream', '--source', 'synthetic:160x96@0', '--model', {str(tiny_onnx)!r}, "
        "'--mode', 'every-frame', '--max-frames', '3', "
        f"'--report', {str(tmp_path / 'r.json')!r}]); "
        "print(rc, 'torch' in sys.modules, 'onnx' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split()[-3:] == ["0", "False", "False"], out.stderr[-2000:]
    assert json.loads((tmp_path / "r.json").read_text())["frames_out"] == 3


def test_classes_are_under_250_lines():
    """A class of many jobs is several classes (the stream pipeline once held 562 lines)."""
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_CLASS_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.name} ({n} lines)")
    assert not long, long
