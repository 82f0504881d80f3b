#!/usr/bin/env python3
"""Layers point down only: no two source files of a crate import each other,
directly or around a circle, and no library source file grows past the limit.

A file's imports are its `crate::a::b` and `super::` paths, resolved to the
longest module prefix that is a file; a module's own children are not
imports unless it names them. Test-only files count too.
"""
import os
import re
import sys

LIMIT = 720  # lines per library source file ("about 700")
CRATES = ["shm-primitives", "shm-primitives-async", "vox-shm", "vox-shm-cli", "vox-shm-testkit"]
LIBRARIES = ["shm-primitives", "shm-primitives-async", "vox-shm"]


def module_of(src, path):
    parts = os.path.relpath(path, src)[:-3].split(os.sep)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def imports(mods, me, text):
    text = re.sub(r"//.*", "", text)
    refs = {tuple(m.group(1).split("::")) for m in re.finditer(r"\bcrate::((?:[a-z_0-9]+::)*[a-z_0-9]+)", text)}
    for m in re.finditer(r"\b((?:super::)+)((?:[a-z_0-9]+::)*[a-z_0-9]*)", text):
        up = m.group(1).count("super::")
        base = me[: len(me) - up]
        refs.add(base + tuple(x for x in m.group(2).split("::") if x))
    out = set()
    for r in refs:
        for k in range(len(r), 0, -1):
            if r[:k] in mods:
                if r[:k] != me:
                    out.add(r[:k])
                break
    return out


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates")
    bad = 0
    for crate in CRATES:
        src = os.path.join(root, crate, "src")
        files = [os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs if f.endswith(".rs")]
        files = [f for f in files if os.sep + "bin" + os.sep not in f]
        mods = {module_of(src, f): f for f in files}
        edges = {m: imports(mods, m, open(f).read()) for m, f in mods.items()}
        state = {}

        def visit(m, stack):
            nonlocal bad
            state[m] = "open"
            stack.append(m)
            for n in sorted(edges[m]):
                if state.get(n) == "open":
                    circle = stack[stack.index(n):] + [n]
                    print(f"{crate}: import circle " + " -> ".join("::".join(x) or "lib" for x in circle))
                    bad += 1
                elif n not in state:
                    visit(n, stack)
            stack.pop()
            state[m] = "done"

        for m in sorted(mods):
            if m not in state:
                visit(m, [])
        if crate in LIBRARIES:
            for f in files:
                n = sum(1 for _ in open(f))
                if n > LIMIT:
                    print(f"{os.path.relpath(f, root)}: {n} lines, over {LIMIT}")
                    bad += 1
    if bad:
        sys.exit(1)
    print("layers: no import circles, no library file over", LIMIT, "lines")


if __name__ == "__main__":
    main()
