//! No import cycle among the source files of any crate of the workspace (the library, the
//! spec and the selftest tool), and the crates stay in their layers: the spec names no other
//! crate, the library names nothing of the tool.
//!
//! The graph: an edge from file A to file B where A names an item B defines (`crate::…`,
//! `super::…`, `self::…`, or a path through a child module of A), followed through
//! `pub use` re-exports to the file that defines the item. Comments are ignored, `main.rs`
//! (the binary) is left out, a `crate::spec::…` path is the spec crate, and a module's
//! `pub use` of its own descendants is its facade, not a dependency. Every strongly connected
//! component of more than one file is a cycle.
//!
//! To see why: `IMPORT_EDGES=1` prints every edge, `IMPORT_WHY=backend/kvm/vcpu` the paths one
//! file names and where they lead (with `--nocapture`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;
/// Byte ranges of `pub use` statements, and (exported name, path as written) per item.
type Reexports = (Vec<std::ops::Range<usize>>, Vec<(String, Vec<String>)>);
/// Makes a path written in a module absolute (`None`: another crate).
type Absolute<'a> = dyn Fn(&Module, &[String], bool) -> Option<Module> + 'a;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).expect("file under src");
    let mut parts: Module = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The file's text without `//` comments (doc links are not imports).
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Child modules declared with `mod name;`.
fn children(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let mut l = l.trim();
            if let Some(rest) = l.strip_prefix("pub") {
                l = rest.trim_start();
                if l.starts_with('(') {
                    l = &l[l.find(')')? + 1..];
                }
                l = l.trim_start();
            }
            let name = l.strip_prefix("mod ")?.strip_suffix(';')?.trim();
            name.bytes().all(is_word).then(|| name.to_string())
        })
        .collect()
}

/// Every path `root::a::b…` in `text` whose root is one of `roots`, with its byte offset.
fn paths(text: &str, roots: &[String]) -> Vec<(usize, Vec<String>)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let boundary = i == 0 || !(is_word(b[i - 1]) || b[i - 1] == b':');
        let root = roots.iter().find(|r| {
            boundary
                && b[i..].starts_with(r.as_bytes())
                && b.get(i + r.len()).is_none_or(|c| !is_word(*c))
        });
        let Some(root) = root else {
            i += 1;
            continue;
        };
        let start = i;
        let mut parts = vec![root.clone()];
        i += root.len();
        while b[i..].starts_with(b"::") {
            let s = i + 2;
            let mut e = s;
            while e < b.len() && is_word(b[e]) {
                e += 1;
            }
            if e == s {
                break;
            }
            parts.push(text[s..e].to_string());
            i = e;
        }
        if b[i..].starts_with(b"::{") {
            // `a::b::{C, d::E}`: one path per item (its first segment).
            let close = text[i..].find('}').map_or(b.len(), |c| c + i);
            for item in text[i + 3..close].split(',') {
                let first: String = item
                    .trim()
                    .bytes()
                    .take_while(|c| is_word(*c))
                    .map(char::from)
                    .collect();
                if !first.is_empty() && first != "self" {
                    let mut p = parts.clone();
                    p.push(first);
                    out.push((start, p));
                }
            }
            i = close;
        } else if parts.len() > 1 {
            // A bare root (`pub(crate)`, `self.x`, `mod x;`) is not a path into anything.
            out.push((start, parts));
        }
    }
    out
}

/// Whether `text` defines an item called `name`.
fn defines(text: &str, name: &str) -> bool {
    let b = text.as_bytes();
    [
        "fn ",
        "struct ",
        "enum ",
        "trait ",
        "type ",
        "const ",
        "static ",
        "mod ",
        "union ",
        "macro_rules! ",
    ]
    .iter()
    .any(|kw| {
        let needle = format!("{kw}{name}");
        text.match_indices(&needle).any(|(i, _)| {
            (i == 0 || !is_word(b[i - 1])) && b.get(i + needle.len()).is_none_or(|c| !is_word(*c))
        })
    })
}

/// The `pub use` statements of `text`: their byte ranges, and for each the path it names
/// (as written) for every exported name.
fn reexports(text: &str) -> Reexports {
    let mut spans = Vec::new();
    let mut names = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..]
        .find("pub use ")
        .map(|i| i + from)
        .or_else(|| text[from..].find("pub(crate) use ").map(|i| i + from))
    {
        let Some(end) = text[i..].find(';').map(|e| e + i) else {
            break;
        };
        spans.push(i..end);
        let stmt = text[i..end].split_once("use ").map_or("", |(_, s)| s);
        let stmt: String = stmt.split_whitespace().collect::<Vec<_>>().join(" ");
        let (prefix, list) = match stmt.split_once("::{") {
            Some((p, l)) => (p.to_string(), l.trim_end_matches('}').to_string()),
            None => match stmt.rsplit_once("::") {
                Some((p, l)) => (p.to_string(), l.to_string()),
                None => (String::new(), stmt.clone()),
            },
        };
        for item in list.split(',') {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let (orig, exported) = item.split_once(" as ").unwrap_or((item, item));
            let mut path: Vec<String> = prefix
                .split("::")
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect();
            path.push(orig.trim().to_string());
            names.push((exported.trim().to_string(), path));
        }
        from = end;
    }
    (spans, names)
}

type Edges = BTreeMap<Module, BTreeSet<Module>>;

/// The files of the crate whose sources are in `src` (its binary's `main.rs` left out), and
/// the import edges between them.
fn import_graph(src: &Path) -> (BTreeMap<Module, PathBuf>, Edges) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeMap<Module, PathBuf> = files
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n != "main.rs"))
        .map(|p| (module_of(src, &p), p))
        .collect();
    let texts: BTreeMap<Module, String> = modules
        .iter()
        .map(|(m, f)| {
            let text = std::fs::read_to_string(f).expect("source file");
            (m.clone(), strip_comments(&text))
        })
        .collect();
    // A path as written in `module` (after `crate`/`super`/`self`), made absolute; `None` for
    // another crate.
    let absolute = |module: &Module, parts: &[String], in_tests: bool| -> Option<Module> {
        match parts.first().map(String::as_str) {
            Some("crate") => Some(parts[1..].to_vec()),
            Some("super" | "self") => {
                let mut base = module.clone();
                if in_tests {
                    base.push("tests".into());
                }
                let mut rest = parts;
                while let Some(first) = rest.first() {
                    match first.as_str() {
                        "super" => {
                            base.pop();
                        }
                        "self" => {}
                        _ => break,
                    }
                    rest = &rest[1..];
                }
                base.extend(rest.iter().cloned());
                Some(base)
            }
            Some(child) if children(&texts[module]).iter().any(|c| c == child) => {
                let mut base = module.clone();
                base.extend(parts.iter().cloned());
                Some(base)
            }
            _ => None,
        }
    };
    // The file that defines the item `path` names, through re-exports.
    fn resolve(
        path: &[String],
        modules: &BTreeMap<Module, PathBuf>,
        texts: &BTreeMap<Module, String>,
        absolute: &Absolute,
        depth: u32,
    ) -> Option<Module> {
        if path.first().is_some_and(|p| p == "spec") {
            return None; // the spec crate, re-exported
        }
        let m = (0..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|m| modules.contains_key(m))?;
        let Some(name) = path.get(m.len()) else {
            return Some(m);
        };
        if depth > 8 || defines(&texts[&m], name) {
            return Some(m);
        }
        let (_, names) = reexports(&texts[&m]);
        match names.iter().find(|(exported, _)| exported == name) {
            Some((_, source)) => match absolute(&m, source, false) {
                Some(abs) => resolve(&abs, modules, texts, absolute, depth + 1),
                None => None, // re-exported from another crate
            },
            None => Some(m),
        }
    }

    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for module in modules.keys() {
        let text = &texts[module];
        let mut roots: Vec<String> = ["crate", "super", "self"].map(String::from).to_vec();
        let kids = children(text);
        roots.extend(kids.iter().cloned());
        let tests_at = text.find("mod tests {");
        let (facade, _) = reexports(text);
        for (at, parts) in paths(text, &roots) {
            let in_tests = tests_at.is_some_and(|t| at > t);
            let Some(abs) = absolute(module, &parts, in_tests) else {
                continue;
            };
            let Some(target) = resolve(&abs, &modules, &texts, &absolute, 0) else {
                continue;
            };
            if &target == module {
                continue;
            }
            let in_pub_use = facade.iter().any(|r| r.contains(&at));
            if in_pub_use && target.starts_with(module) {
                continue; // the module's facade over its own children
            }
            if std::env::var("IMPORT_WHY").is_ok_and(|w| w == module.join("/")) {
                eprintln!("{} -> {}", parts.join("::"), target.join("/"));
            }
            edges.entry(module.clone()).or_default().insert(target);
        }
    }

    if std::env::var_os("IMPORT_EDGES").is_some() {
        for (a, bs) in &edges {
            let bs: Vec<String> = bs.iter().map(|b| b.join("/")).collect();
            eprintln!("{} -> {}", a.join("/"), bs.join(" "));
        }
    }
    (modules, edges)
}

/// Every import cycle (strongly connected component of more than one file) of the graph.
fn cycles(modules: &BTreeMap<Module, PathBuf>, edges: &Edges) -> Vec<String> {
    // Strongly connected components (Kosaraju).
    let nodes: Vec<Module> = modules.keys().cloned().collect();
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        n: &Module,
        edges: &BTreeMap<Module, BTreeSet<Module>>,
        seen: &mut BTreeSet<Module>,
        order: &mut Vec<Module>,
    ) {
        if !seen.insert(n.clone()) {
            return;
        }
        for m in edges.get(n).into_iter().flatten() {
            visit(m, edges, seen, order);
        }
        order.push(n.clone());
    }
    for n in &nodes {
        visit(n, edges, &mut seen, &mut order);
    }
    let mut reverse: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (a, bs) in edges {
        for b in bs {
            reverse.entry(b.clone()).or_default().insert(a.clone());
        }
    }
    let mut assigned = BTreeSet::new();
    let mut cycles = Vec::new();
    for n in order.iter().rev() {
        let mut component = Vec::new();
        visit(n, &reverse, &mut assigned, &mut component);
        if component.len() > 1 {
            cycles.push(
                component
                    .iter()
                    .map(|m| m.join("/"))
                    .collect::<Vec<_>>()
                    .join(" <-> "),
            );
        }
    }
    cycles
}

#[test]
fn no_import_cycle_among_the_library_files() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (modules, edges) = import_graph(&src);
    let cycles = cycles(&modules, &edges);
    assert!(
        cycles.is_empty(),
        "import cycles among src/ files: {cycles:#?}"
    );
    // The scan sees the library: the cache uses the layout (through the re-exports, the files
    // that define its items) and the backend; the layout uses nothing of the library above it.
    let cache = vec!["cache".to_string()];
    let uses = |m: &Module, top: &str| edges.get(m).into_iter().flatten().any(|t| t[0] == top);
    assert!(edges[&cache].contains(&vec!["slots".into(), "reg".into()]));
    assert!(uses(&cache, "backend"));
    for m in modules
        .keys()
        .filter(|m| m.first().is_some_and(|t| t == "slots"))
    {
        for t in edges.get(m).into_iter().flatten() {
            assert_eq!(t[0], "slots", "{} uses {}", m.join("/"), t.join("/"));
        }
    }
}

/// The sources of a sibling crate of the workspace, or `None` (having said so) in a packaged
/// copy of this crate, which has no siblings.
fn sibling(name: &str) -> Option<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name)
        .join("src");
    if !src.is_dir() {
        eprintln!("skipped: no crates/{name} beside this crate (a packaged copy)");
        return None;
    }
    Some(src)
}

#[test]
fn no_import_cycle_among_the_files_of_the_spec_and_the_selftest_tool() {
    for name in ["spec", "selftest"] {
        let Some(src) = sibling(name) else { continue };
        let (modules, edges) = import_graph(&src);
        assert!(modules.len() > 5, "{name}: the scan sees the crate");
        assert!(!edges.is_empty(), "{name}: the scan sees imports");
        let cycles = cycles(&modules, &edges);
        assert!(
            cycles.is_empty(),
            "import cycles among crates/{name}/src files: {cycles:#?}"
        );
    }
}

/// Every `.rs` file under `src` whose code (comments aside) names one of `crates`.
fn naming(src: &Path, crates: &[&str]) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut found = Vec::new();
    for f in files {
        let text = strip_comments(&std::fs::read_to_string(&f).expect("source file"));
        for c in crates {
            let at = text.match_indices(c).any(|(i, _)| {
                let before = text.as_bytes().get(i.wrapping_sub(1)).copied();
                let after = text.as_bytes().get(i + c.len()).copied();
                !before.is_some_and(is_word) && !after.is_some_and(is_word)
            });
            if at {
                found.push(format!("{} names {c}", f.display()));
            }
        }
    }
    found
}

#[test]
fn the_crates_stay_in_their_layers() {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let tool = [
        "vcpu_reset_selftest",
        "clap",
        "serde_json",
        "serde",
        "iced_x86",
        "vm_memory",
    ];
    let found = naming(&lib, &tool);
    assert!(
        found.is_empty(),
        "the library uses the tool's crates: {found:#?}"
    );
    if let Some(spec) = sibling("spec") {
        let found = naming(&spec, &["vcpu_reset", "vcpu_reset_selftest", "kvm_ioctls"]);
        assert!(found.is_empty(), "the spec uses other crates: {found:#?}");
    }
}
