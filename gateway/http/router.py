"""Maps (method, path) to a handler and the roles allowed to call it.

Static paths are a dict lookup; paths with one `{param}` segment are matched by prefix and
segment count. The router knows nothing of what handlers do.
"""
from __future__ import annotations

from typing import Awaitable, Callable, NamedTuple

Handler = Callable[..., Awaitable[object]]


class Route(NamedTuple):
    handler: Handler
    roles: frozenset[str] | None  # None: no API key needed
    name: str  # label for metrics (the pattern, not the concrete path)


class Router:
    def __init__(self) -> None:
        self._static: dict[str, dict[str, Route]] = {}
        self._patterns: list[tuple[list[str], dict[str, Route]]] = []

    def add(self, method: str, pattern: str, handler: Handler, roles: tuple[str, ...] | None) -> None:
        route = Route(handler, frozenset(roles) if roles is not None else None, pattern)
        if "{" not in pattern:
            self._static.setdefault(pattern, {})[method] = route
            return
        parts = pattern.strip("/").split("/")
        for known, methods in self._patterns:
            if known == parts:
                methods[method] = route
                return
        self._patterns.append((parts, {method: route}))

    def match(self, method: str, path: str) -> tuple[Route | None, list[str], bool]:
        """(route, params, path_known). path_known with no route means 405. HEAD takes the GET route
        (the server sends its answer without the body, RFC 9110 9.3.2)."""
        methods = self._static.get(path)
        if methods is not None:
            return _for(methods, method), [], True
        parts = path.strip("/").split("/")
        for pattern, methods in self._patterns:
            if len(pattern) != len(parts):
                continue
            params = []
            for want, got in zip(pattern, parts):
                if want[0] == "{":
                    if not got:
                        break
                    params.append(got)
                elif want != got:
                    break
            else:
                return _for(methods, method), params, True
        return None, [], False

    def allowed_methods(self, path: str) -> list[str]:
        methods = self._static.get(path)
        if methods is None:
            parts = path.strip("/").split("/")
            for pattern, candidate in self._patterns:
                if len(pattern) == len(parts) and all(w[0] == "{" or w == g for w, g in zip(pattern, parts)):
                    methods = candidate
                    break
            else:
                return []
        return sorted({*methods, "HEAD"} if "GET" in methods else methods)


def _for(methods: dict[str, Route], method: str) -> Route | None:
    route = methods.get(method)
    if route is None and method == "HEAD":
        return methods.get("GET")
    return route
