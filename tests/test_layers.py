"""The layer order of docs/architecture.md and mfarray/__init__.py, checked on the imports: a
module never imports a layer listed after its own."""

import ast
import re
import pathlib

import mfarray

LAYERS = ["backend", "io", "linalg", "geometry", "roots", "sampling", "pointset", "cluster", "networks", "optim", "kernels",
          "losses", "kahler", "flows", "tune", "experiments", "plots", "study", "cli"]
REPO = pathlib.Path(__file__).resolve().parents[1]
ROOT = REPO / "mfarray"  # the source tree (the installed copy has no docs beside it)


def _layer(parts):
    return LAYERS.index(parts[0]) if parts and parts[0] in LAYERS else None


def _imports(path):
    """mfarray-internal modules imported by a file, as package-relative parts."""
    here = path.relative_to(ROOT).with_suffix("").parts
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module and node.module.startswith("mfarray."):
                    yield tuple(node.module.split(".")[1:])
                continue
            base = here[: len(here) - node.level]
            mod = tuple(node.module.split(".")) if node.module else ()
            if mod:
                yield base + mod
            else:
                for alias in node.names:
                    yield base + (alias.name,)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("mfarray."):
                    yield tuple(alias.name.split(".")[1:])


def test_no_module_imports_a_higher_layer():
    bad = []
    for path in ROOT.rglob("*.py"):
        if path.name == "__init__.py" and path.parent == ROOT:
            continue  # the package front door imports everything
        own = _layer(path.relative_to(ROOT).with_suffix("").parts)
        assert own is not None, f"{path} is in no layer: add it to LAYERS and docs/architecture.md"
        for target in _imports(path):
            other = _layer(target)
            if other is not None and other > own:
                bad.append(f"{path.relative_to(ROOT)} imports {'.'.join(target)}")
    assert not bad, bad


def test_the_layer_order_is_the_documented_one():
    doc = (REPO / "docs" / "architecture.md").read_text()
    line = next(s for s in doc.splitlines() if s.startswith("Layer order:"))
    assert [w.strip(" .`") for w in line.split(":", 1)[1].split("<-")] == LAYERS
    text = mfarray.__doc__.split("Layers", 1)[1]
    positions = [re.search(rf"\b{name}\b", text).start() for name in LAYERS]
    assert positions == sorted(positions), "mfarray/__init__.py lists the layers in another order"
