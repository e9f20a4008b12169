"""Imports go one way (DESIGN.md): config/types -> data -> rewards -> rollout -> algo -> models -> the rest -> cli."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "r1kit"
# Lower number = lower layer; a module may import only from its own layer or lower ones.
LAYERS = {
    "r1kit.config": 0, "r1kit.config_checks": 0, "r1kit.recipe": 0, "r1kit.config_ranges": 0, "r1kit.presets": 0, "r1kit.types": 0,
    "r1kit.tools": 2, "r1kit.producer": 8,
    "r1kit.rollout.remote_worker": 5,  # the producer's generator on a server: the worker's requests and errors
    "r1kit.rollout.worker": 5,  # a generation process's entry point: it sets the CPU kernel caches as models.load_model does
    "r1kit.data": 1, "r1kit.rewards": 2, "r1kit.rollout": 3, "r1kit.algo": 4, "r1kit.models": 5, "r1kit.model_files": 5,
    "r1kit.logging": 5, "r1kit.distributed": 5, "r1kit.report": 5, "r1kit.trackers": 5, "r1kit.checkpoint": 6,
    "r1kit.forward": 5, "r1kit.prompt_attention": 5, "r1kit.hub": 5, "r1kit.batch": 6, "r1kit.reference": 7, "r1kit.chat": 8, "r1kit.generate": 9,
    "r1kit.evaluate": 7, "r1kit.rundir": 7, "r1kit.sft": 8, "r1kit.run": 8, "r1kit.trainer": 9, "r1kit.serve": 9, "r1kit.doctor": 9, "r1kit.launch": 9, "r1kit.cli": 10, "r1kit.__main__": 11,
}


def layer_of(module: str) -> int:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return LAYERS[prefix]
    raise KeyError(f"{module} has no layer in tests/test_layers.py: add it")


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        if name != "r1kit":
            yield name, path


def imports_of(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("name, path", list(modules()), ids=[n for n, _ in modules()])
def test_imports_point_down(name, path):
    mine = layer_of(name)
    for imported in imports_of(path):
        if imported.startswith("r1kit."):
            assert layer_of(imported) <= mine, f"{name} (layer {mine}) imports {imported} (layer {layer_of(imported)})"


@pytest.mark.parametrize("name, path", [(n, p) for n, p in modules() if n.startswith("r1kit.rewards")])
def test_rewards_never_import_torch(name, path):
    assert not [i for i in imports_of(path) if i.split(".")[0] in ("torch", "transformers")]
