#!/usr/bin/env python3
"""Fail when any two opskit modules import each other, directly or through others.

The layers contract in pyproject.toml (run by ``lint-imports``) keeps packages one way; this
check covers what it cannot see: a circle between two modules of one package, or through a
package's ``__init__``. Imports under ``if TYPE_CHECKING:`` count too (a circle hidden from
the interpreter is still a circle in the design). Prints each circle and exits 1.
"""

from __future__ import annotations

import sys

import grimp


def strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """Return every group of two or more modules that reach each other (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:
        nonlocal counter
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return groups


def main() -> int:
    graph = grimp.build_graph("opskit")
    circles = strongly_connected(graph)
    for circle in circles:
        print("import circle: " + " <-> ".join(circle))
    if circles:
        print(f"{len(circles)} import circle(s); cut each at a seam (a type owned below both users)")
        return 1
    print("no import circles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
