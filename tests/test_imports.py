"""Which module may import which, read from the source with `ast`.

The actors take frozen settings that the composition root (flow.run with flow.builders) makes from
the config; none of them may reach the config, the CLI or the wiring, even through another module.
"""

import ast
from pathlib import Path

import flow
from tests.fixtures import REPO_ROOT

PACKAGE_FOLDERS = {"flow": REPO_ROOT / "flow", "flow.actors": REPO_ROOT / "actors"}
NOT_FOR_ACTORS = {"flow.config", "flow.cli", "flow.run", "flow.builders"}


def source_file(module: str) -> Path | None:
    """The file of one of flow's own modules (a package's __init__.py), or None for any other module."""
    for package in sorted(PACKAGE_FOLDERS, key=len, reverse=True):
        if module == package or module.startswith(package + "."):
            base = PACKAGE_FOLDERS[package].joinpath(*module[len(package):].split(".")[1:])
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                if candidate.is_file():
                    return candidate
            return None
    return None


def imports_of(module: str) -> set[str]:
    """The modules `module` imports anywhere in its source (functions too), by absolute name.

    `from package import name` counts as the submodule `package.name` where there is one, and a
    name that flow's __init__ exports lazily as the module that defines it.
    """
    path = source_file(module)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            origin = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]) if node.level else ""
            source = ".".join(part for part in (origin, node.module) if part)
            for alias in node.names:
                if source_file(f"{source}.{alias.name}"):
                    found.add(f"{source}.{alias.name}")
                elif source == "flow" and alias.name in flow._EXPORTS:
                    found.add(flow._EXPORTS[alias.name].partition(":")[0])
                else:
                    found.add(source)
    return found


def import_chains(start: str) -> dict[str, list[str]]:
    """Every flow module `start` reaches through imports, each with one chain of imports that reaches it."""
    chains = {start: [start]}
    waiting = [start]
    while waiting:
        module = waiting.pop()
        for imported in sorted(imports_of(module)):
            if imported not in chains and source_file(imported):
                chains[imported] = chains[module] + [imported]
                waiting.append(imported)
    return chains


def actor_modules() -> list[str]:
    folder = PACKAGE_FOLDERS["flow.actors"]
    names = []
    for path in folder.rglob("*.py"):
        parts = path.relative_to(folder).with_suffix("").parts
        names.append(".".join(("flow.actors", *(parts[:-1] if parts[-1] == "__init__" else parts))))
    return sorted(names)


def test_no_actor_reaches_the_config_the_cli_or_the_wiring():
    offending = [" -> ".join(chain) for actor in actor_modules()
                 for module, chain in import_chains(actor).items() if module in NOT_FOR_ACTORS]
    assert not offending, "actors must take settings, not the config:\n" + "\n".join(offending)


def test_the_walk_sees_relative_nested_and_transitive_imports(tmp_path, monkeypatch):
    # The check above passes vacuously if the walk misses imports: show it finds each kind.
    assert "flow.actors.loader" in actor_modules() and "flow.actors" in actor_modules()
    assert import_chains("flow.actors.compute")["flow.optim"] == ["flow.actors.compute", "flow.optim"]
    assert "flow.config" in import_chains("flow.io_speed")  # imported inside a function
    assert import_chains("flow.run")["flow.config"][0] == "flow.run"
    package = tmp_path / "actors"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "relative.py").write_text("from . import helper\nfrom .helper import thing\n")
    (package / "helper.py").write_text("def later():\n    from flow import load_config\n")
    monkeypatch.setitem(PACKAGE_FOLDERS, "flow.actors", package)
    chains = import_chains("flow.actors.relative")
    assert chains["flow.config"] == ["flow.actors.relative", "flow.actors.helper", "flow.config"]
