"""The dependency graph of a pipeline, built and validated once, at construction."""

from __future__ import annotations

import heapq
from typing import Any, Iterable, Sequence

from ..errors import CycleError, DependencyError


class Graph:
    """Nodes wired by name: a parameter named like another node's output is an edge.

    ``execution_order`` is topological, ties broken by node name (deterministic).
    """

    def __init__(self, nodes: Sequence[Any]):
        self.nodes = list(nodes)
        self.producer: dict[str, Any] = {}
        for n in self.nodes:
            for out in n.output_names:
                other = self.producer.get(out)
                if other is not None:
                    raise DependencyError(
                        f"output {out!r} is produced by two nodes: {other.name!r} and "
                        f"{n.name!r}; rename one output"
                    )
                self.producer[out] = n
        self.parents: dict[int, list[Any]] = {}
        consumed: set[str] = set()
        for n in self.nodes:
            ps = []
            for arg in n.root_args:
                p = self.producer.get(arg)
                if p is not None:
                    consumed.add(arg)
                    if all(q is not p for q in ps):
                        ps.append(p)
            self.parents[id(n)] = ps
        self.execution_order = self._toposort()
        self._position = {id(n): i for i, n in enumerate(self.execution_order)}

        # Output pruning of nested pipelines: when siblings consume some but not all of
        # a nested node's outputs, the others are internal (computed only on request).
        self.exposed: dict[int, tuple[str, ...]] = {}
        for n in self.nodes:
            outs = n.output_names
            used = tuple(o for o in outs if o in consumed)
            if getattr(n, "is_pipeline_node", False) and 0 < len(used) < len(outs):
                self.exposed[id(n)] = used
            else:
                self.exposed[id(n)] = outs

        args: dict[str, bool] = {}  # external input -> optional everywhere?
        for n in self.nodes:
            defaults = n.defaults
            for arg in n.root_args:
                if arg not in self.producer:
                    args[arg] = args.get(arg, True) and arg in defaults
        self.root_args = sorted(args)
        self.optional_args = frozenset(a for a, opt in args.items() if opt)
        self.available_output_names = sorted(self.producer)
        self.default_output_names = [o for n in self.execution_order for o in self.exposed[id(n)]]

    def _toposort(self) -> list[Any]:
        children: dict[int, list[Any]] = {id(n): [] for n in self.nodes}
        indegree = {id(n): 0 for n in self.nodes}
        for n in self.nodes:
            for p in self.parents[id(n)]:
                children[id(p)].append(n)
                indegree[id(n)] += 1
        ready = [(n.name, i, n) for i, n in enumerate(self.nodes) if indegree[id(n)] == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            _, _, n = heapq.heappop(ready)
            order.append(n)
            for c in children[id(n)]:
                indegree[id(c)] -= 1
                if indegree[id(c)] == 0:
                    heapq.heappush(ready, (c.name, self.nodes.index(c), c))
        if len(order) < len(self.nodes):
            raise CycleError(f"the graph has a cycle: {self._find_cycle(indegree)}")
        return order

    def _find_cycle(self, indegree: dict[int, int]) -> str:
        stuck = {id(n): n for n in self.nodes if indegree[id(n)] > 0}
        start = min(stuck.values(), key=lambda n: n.name)
        path, seen = [start], {id(start): 0}
        while True:  # every stuck node has a stuck parent: walk back until a repeat
            parent = min((p for p in self.parents[id(path[-1])] if id(p) in stuck),
                         key=lambda p: p.name)
            if id(parent) in seen:
                loop = path[seen[id(parent)]:] + [parent]
                return " -> ".join(n.name for n in reversed(loop))
            seen[id(parent)] = len(path)
            path.append(parent)

    def get_required_nodes(self, output_names: str | Iterable[str] | None) -> list[Any]:
        """The nodes needed for ``output_names``, in execution order (all if None)."""
        if output_names is None:
            return list(self.execution_order)
        if isinstance(output_names, str):
            output_names = [output_names]
        needed: dict[int, Any] = {}
        stack = [self.producer[o] for o in output_names if o in self.producer]
        while stack:
            n = stack.pop()
            if id(n) not in needed:
                needed[id(n)] = n
                stack.extend(self.parents[id(n)])
        return sorted(needed.values(), key=lambda n: self._position[id(n)])

    def __repr__(self) -> str:
        return f"Graph(order={[n.name for n in self.execution_order]})"
