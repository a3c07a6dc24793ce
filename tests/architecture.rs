//! The layer rule of `docs/ARCHITECTURE.md`, checked on the source: a module may use modules of
//! its own layer or of layers below it, never above; cycles between the top-level modules of
//! one layer are refused too; SQL is written only in `src/storage/`; and handlers (`src/api/`)
//! reach storage only through the engines, never through a `Db` handle.
//!
//! The check reads `crate::…` and `super::…` paths in `src/` (every `use` and every inline
//! path, test modules included), so an upward dependency cannot hide in a function body.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom first. A module path belongs to the layer of its longest listed prefix.
/// Keep in step with the table in docs/ARCHITECTURE.md.
const LAYERS: &[(&str, &[&str])] = &[
    ("foundation", &["error", "ssrf", "config", "events", "ids"]),
    ("storage", &["storage"]),
    ("signals and services", &["notifier", "lease", "metrics", "ratelimit", "signing", "voip", "email"]),
    ("federation transport", &["federation"]),
    ("engine: registries", &["push", "appservice"]),
    ("engine: accounts, keys, media", &["accounts", "e2ee", "media"]),
    ("engine: rooms", &["rooms"]),
    ("sync", &["sync"]),
    ("delivery", &["delivery"]),
    ("api", &["api"]),
    ("process", &["cluster", "server", "import", "main", "lib"]),
];

/// Files outside `src/storage/` allowed to hold SQL, each with the reason.
const SQL_ELSEWHERE: &[(&str, &str)] = &[(
    "import/synapse_db.rs",
    "reads a stopped Synapse's database, a foreign schema that Myelin's storage layer does not model",
)];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/rooms/federated/inbound.rs` → `["rooms", "federated", "inbound"]`; `mod.rs` names its
/// folder.
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src_dir()).expect("under src");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().expect("file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_owned());
    }
    parts
}

fn layer_of(module: &[String]) -> Option<(usize, String)> {
    let mut best: Option<(usize, usize, String)> = None;
    for (i, (_, prefixes)) in LAYERS.iter().enumerate() {
        for prefix in *prefixes {
            let p: Vec<&str> = prefix.split("::").collect();
            if module.len() >= p.len()
                && module.iter().zip(&p).all(|(a, b)| a == b)
                && best.as_ref().is_none_or(|b| p.len() > b.1)
            {
                best = Some((i, p.len(), prefix.to_string()));
            }
        }
    }
    best.map(|(i, _, p)| (i, p))
}

/// The source without comments (documentation may name any module; code may not).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module paths a file refers to: `crate::a::b…` and `super::…` resolved from its module.
fn references(file: &Path, text: &str) -> BTreeSet<Vec<String>> {
    let text = &code_of(text);
    let me = module_of(file);
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while i < bytes.len() {
        let start_ok = i == 0 || !ident(bytes[i - 1]);
        let rest = &text[i..];
        let (mut base, mut j) = if start_ok && rest.starts_with("crate::") {
            (Vec::new(), i + "crate::".len())
        } else if start_ok && rest.starts_with("super::") {
            (me.clone(), i)
        } else {
            i += 1;
            continue;
        };
        // Resolve leading `super::` segments (`module_of` already names a `mod.rs` by its
        // folder, so each one is one step up).
        while text[j..].starts_with("super::") {
            base.pop();
            j += "super::".len();
        }
        // Read the following `name::name…` path.
        loop {
            let k = text[j..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(text.len(), |k| j + k);
            if k == j {
                break;
            }
            base.push(text[j..k].to_owned());
            if text[k..].starts_with("::") {
                j = k + 2;
            } else {
                break;
            }
        }
        if !base.is_empty() {
            out.insert(base);
        }
        i = j.max(i + 1);
    }
    out
}

fn files() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).expect("read source");
            (f, text)
        })
        .collect()
}

#[test]
fn every_module_has_a_layer() {
    let missing: Vec<String> =
        files().iter().map(|(f, _)| module_of(f)).filter(|m| layer_of(m).is_none()).map(|m| m.join("::")).collect();
    assert!(missing.is_empty(), "modules without a layer in tests/architecture.rs LAYERS: {missing:?}");
}

#[test]
fn modules_import_only_their_layer_or_below() {
    let mut upward = Vec::new();
    for (file, text) in files() {
        let me = module_of(&file);
        let Some((mine, _)) = layer_of(&me) else { continue };
        for target in references(&file, &text) {
            if let Some((theirs, prefix)) = layer_of(&target)
                && theirs > mine
            {
                upward.push(format!(
                    "{} ({}) uses {} ({}: {prefix})",
                    file.strip_prefix(src_dir()).unwrap().display(),
                    LAYERS[mine].0,
                    target.join("::"),
                    LAYERS[theirs].0
                ));
            }
        }
    }
    assert!(upward.is_empty(), "imports that run up a layer (docs/ARCHITECTURE.md):\n{}", upward.join("\n"));
}

#[test]
fn no_cycles_between_top_level_modules() {
    // Top-level module -> top-level modules it uses.
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, text) in files() {
        let me = module_of(&file);
        let Some(top) = me.first().cloned() else { continue };
        for target in references(&file, &text) {
            if target[0] != top && layer_of(&target).is_some() {
                graph.entry(top.clone()).or_default().insert(target[0].clone());
            }
        }
    }
    // Depth-first search for a back edge.
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(n.to_owned());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_owned());
        for m in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        let cycle = visit(n, &graph, &mut Vec::new(), &mut done);
        assert!(cycle.is_none(), "modules that import each other: {}", cycle.unwrap().join(" -> "));
    }
}

#[test]
fn sql_is_written_only_in_storage() {
    let mut found = Vec::new();
    for (file, text) in files() {
        let rel = file.strip_prefix(src_dir()).unwrap().to_string_lossy().into_owned();
        if rel.starts_with("storage/") || SQL_ELSEWHERE.iter().any(|(f, _)| *f == rel) {
            continue;
        }
        for (n, line) in text.lines().enumerate() {
            if ["sqlx::query", "query_as(", "query_scalar(", "AssertSqlSafe"].iter().any(|p| line.contains(p)) {
                found.push(format!("src/{rel}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "SQL outside src/storage/:\n{}", found.join("\n"));
}

/// Where a handler's code reaches storage itself: a `.db()` handle, the `Db` type or its pool.
/// Row types of `storage` may appear (engines return them); queries may not.
fn storage_reach(text: &str) -> Vec<(usize, String)> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let names_db = |l: &str| {
        l.match_indices("Db").any(|(i, _)| {
            !l[..i].chars().next_back().is_some_and(ident) && !l[i + 2..].chars().next().is_some_and(ident)
        })
    };
    code_of(text)
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(".db()") || l.contains(".pool()") || names_db(l))
        .map(|(n, l)| (n + 1, l.trim().to_owned()))
        .collect()
}

#[test]
fn handlers_reach_storage_only_through_the_engines() {
    let mut found = Vec::new();
    for (file, text) in files() {
        let rel = file.strip_prefix(src_dir()).unwrap().to_string_lossy().into_owned();
        if !rel.starts_with("api/") {
            continue;
        }
        found.extend(storage_reach(&text).into_iter().map(|(n, l)| format!("src/{rel}:{n}: {l}")));
    }
    assert!(
        found.is_empty(),
        "handlers that reach storage instead of calling an engine method (docs/ARCHITECTURE.md):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_checker_sees_what_it_must() {
    // The reader itself: paths are found in `use` lines and inline, `super` is resolved.
    let file = src_dir().join("rooms/federated/inbound.rs");
    let refs = references(&file, "use crate::sync::x;\nlet a = super::super::super::accounts::f();\nsuper::fetch::g()");
    assert!(refs.contains(&vec!["sync".to_owned(), "x".to_owned()]));
    assert!(refs.contains(&vec!["accounts".to_owned(), "f".to_owned()]));
    assert!(refs.contains(&vec!["rooms".to_owned(), "federated".to_owned(), "fetch".to_owned(), "g".to_owned()]));
    assert_eq!(layer_of(&["delivery".to_owned(), "push".to_owned()]).map(|l| l.0), Some(8));
    assert!(layer_of(&["sync".to_owned()]).unwrap().0 > layer_of(&["rooms".to_owned()]).unwrap().0);
    // A handler's reach into storage, in any of its spellings; row types and comments pass.
    let reach = storage_reach(
        "let a = state.rooms.db().get_event(id);\nstate\n    .accounts\n    .db()\nuse crate::storage::{Db, x};\nfn f(db: &Db) {}\nlet r: DbRow = x; // state.rooms.db()\nlet p = db.pool();",
    );
    assert_eq!(reach.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 4, 5, 6, 8]);
}
