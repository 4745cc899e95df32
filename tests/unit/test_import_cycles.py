"""No module of pandaserver imports itself back through others (any import counts, also the
ones inside functions); the layering between packages is checked by `lint-imports`
(pyproject.toml), run by tests/run-all.sh."""

from __future__ import annotations

import grimp


def test_no_import_cycles() -> None:
    graph = grimp.build_graph("pandaserver")
    modules = sorted(graph.modules)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        nonlocal counter
        index[module] = low[module] = counter
        counter += 1
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in modules:
        if module not in index:
            visit(module)
    assert not cycles, f"import cycles: {cycles}"


def test_the_entry_point_is_the_one_import_up_from_the_daemon() -> None:
    """`python -m pandaserver.daemons.master` reaches the command layer through a plain import
    in its `__main__` (seen by grimp, so by the cycle test above and by lint-imports, which
    lists it as the one ignored import); nothing else under `pandaserver.daemons` does."""
    graph = grimp.build_graph("pandaserver")
    upward = {
        (importer, imported)
        for imported in graph.find_children("pandaserver.commands") | {"pandaserver.commands"}
        for importer in graph.find_modules_that_directly_import(imported)
        if importer.startswith("pandaserver.daemons.")
    }
    assert upward == {("pandaserver.daemons.master.__main__", "pandaserver.commands.main")}
