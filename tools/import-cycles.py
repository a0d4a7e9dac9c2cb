"""Import cycles among a crate's source files.

Usage: python3 tools/import-cycles.py crates/vcpu-reset/src [depth] [show-edges-prefix]

Builds the graph of `crate::`, `super::`, `self::` and child-module paths between the files of
`src/` (comments are ignored; `main.rs` is left out; a module's references to its own children
are its facade, not a dependency, and are left out) and prints each strongly connected
component of more than one module. `depth` 1 groups files by top-level module.
"""
import os, re, sys
root = sys.argv[1]; gran = int(sys.argv[2]) if len(sys.argv) > 2 else 99
files = {}
for d, _, fs in os.walk(root):
    for f in fs:
        if not f.endswith('.rs') or f == 'main.rs': continue
        p = os.path.join(d, f); rel = os.path.relpath(p, root)[:-3].split(os.sep)
        if rel[-1] in ('mod', 'lib'): rel = rel[:-1]
        files[tuple(rel)] = p
def resolve(path):
    # longest prefix that is a file-module
    for n in range(len(path), -1, -1):
        if tuple(path[:n]) in files: return tuple(path[:n])
def group(m): return m[:gran]
edges = {}
for mod, p in files.items():
    src = open(p).read()
    # drop comments (doc links are not imports)
    src = re.sub(r'//[^\n]*', '', src)
    # drop #[cfg(test)] mod tests { ... } blocks crudely: keep (tests count too)
    here = list(mod) if not p.endswith(('mod.rs','lib.rs')) else list(mod)
    kids = re.findall(r'^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;', src, re.M)
    src2 = src
    for k in kids: src2 = re.sub(r'(?<![\w:])' + k + r'::', 'self::' + k + '::', src2)
    src = src2
    cut = src.find('mod tests {')
    for m in re.finditer(r'\b((?:crate|super|self)(?:::\w+)*)', src):
        parts = m.group(1).split('::')
        if parts[:2] == ['crate', 'spec']: continue
        inner = cut >= 0 and m.start() > cut
        if parts[0] == 'crate': base = []; parts = parts[1:]
        else:
            base = list(mod) + (['tests'] if inner else [])
            while parts and parts[0] in ('super', 'self'):
                if parts[0] == 'super': base = base[:-1]
                parts = parts[1:]
        tgt = resolve(base + parts)
        if tgt is None or group(tgt) == group(mod): continue
        if tgt[:len(mod)] == mod: continue  # a module's own children: its facade, not a dependency
        # a child referencing its own ancestors' module file counts; parent 'pub use child' too
        edges.setdefault(group(mod), set()).add(group(tgt))
# also 'use x::' relative to self module (2018 relative paths): child modules declared by `mod x;`
nodes = set(group(m) for m in files)
idx = {}; low = {}; st = []; on = set(); sccs = []; c = [0]
sys.setrecursionlimit(10000)
def sc(v):
    idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
    for w in edges.get(v, ()):
        if w not in idx: sc(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], idx[w])
    if low[v] == idx[v]:
        comp = []
        while True:
            w = st.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: sccs.append(comp)
for v in sorted(nodes):
    if v not in idx: sc(v)
for comp in sccs: print(len(comp), sorted('/'.join(x) or 'lib' for x in comp))
print('cycles:', len(sccs))
if len(sys.argv) > 3:
    for v in sorted(edges):
        if '/'.join(v).startswith(sys.argv[3]): print('/'.join(v), '->', sorted('/'.join(x) or 'lib' for x in edges[v]))
