//! Layout checks of the workspace: no import circle among the files of a crate, no source file
//! over [`MAX_LINES`] lines unless [`ALLOWED_LONG`] says why, a `//!` line atop every `src/` file.
//! The tests at the bottom run the same functions on small crates in a temporary directory.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::{fs, io};

/// The longest a source file may be, in lines, unless it is in [`ALLOWED_LONG`].
const MAX_LINES: usize = 600;

/// Files allowed over [`MAX_LINES`], each with the reason a split would hurt.
const ALLOWED_LONG: &[(&str, &str)] = &[(
    "protocol/tests/proptests.rs",
    "one property-test suite of the wire format: its sections share the strategies (headers, \
     errors, frames, bodies), and each file under tests/ would be one more test binary to link",
)];

/// The layout report of the workspace at `root`: empty when every check passes.
fn check(root: &Path) -> io::Result<String> {
    let [long, undocumented] = file_checks(root, ALLOWED_LONG)?;
    let sections = [
        ("import circles (break each)", import_circles(root)?),
        ("files over MAX_LINES (600) lines", long),
        ("files under src/ with no `//!` line", undocumented),
    ];
    let failing = sections.into_iter().filter(|(_, items)| !items.is_empty());
    let text = failing.map(|(title, items)| format!("\n{title}:\n  {}\n", items.join("\n  ")));
    Ok(text.collect())
}

/// The `members` of the workspace at `root`, as directories relative to it.
fn members(root: &Path) -> io::Result<Vec<String>> {
    let toml = fs::read_to_string(root.join("Cargo.toml"))?;
    let after = toml.split_once("\nmembers").map_or("", |(_, after)| after);
    let list = after.split(']').next().unwrap_or("");
    let quoted = list.split('"').skip(1).step_by(2);
    Ok(quoted.map(String::from).collect())
}

/// The `.rs` files under `dir`, sorted; none if `dir` does not exist.
fn rs_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten() {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(rs_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn rel(root: &Path, path: &Path) -> String {
    format!("{}", path.strip_prefix(root).unwrap_or(path).display())
}

/// The files that start a module tree in `krate`: `src/lib.rs`, `src/main.rs`, `src/bin/*.rs`,
/// `src/bin/*/main.rs`, and the file of any `path = ".."` in its manifest (`[[bin]]` and such).
fn crate_roots(krate: &Path) -> io::Result<Vec<PathBuf>> {
    let src = krate.join("src");
    let mut roots = BTreeSet::from([src.join("lib.rs"), src.join("main.rs")]);
    for bin in rs_files(&src.join("bin"))? {
        let in_bin = bin.parent().is_some_and(|dir| dir.ends_with("bin"));
        let main = bin.with_file_name("main.rs");
        roots.insert(if in_bin { bin } else { main });
    }
    let toml = fs::read_to_string(krate.join("Cargo.toml")).unwrap_or_default();
    for line in toml.lines().filter(|line| line.trim().starts_with("path")) {
        roots.extend(line.split('"').nth(1).map(|path| krate.join(path)));
    }
    Ok(roots.into_iter().filter(|path| path.is_file()).collect())
}

/// A token of code (a word, `::` or one punctuation character) and its line.
type Tok = (String, usize);

/// The tokens of `src` without comments, strings and chars: doc links make no edge.
fn tokens(src: &str) -> Vec<Tok> {
    let c: Vec<char> = src.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let (mut out, mut line, mut i) = (Vec::new(), 1, 0);
    while i < c.len() {
        let start = i;
        match (c[i], at(i + 1)) {
            ('/', '/') => i = skip(&c, i, |ch| ch != '\n'),
            ('/', '*') => {
                let mut depth = 0; // block comments nest
                while i < c.len() && (depth > 0 || i == start) {
                    let pair = (c[i], at(i + 1));
                    depth += i32::from(pair == ('/', '*')) - i32::from(pair == ('*', '/'));
                    i += 1 + usize::from(matches!(pair, ('/', '*') | ('*', '/')));
                }
            }
            ('"', _) => i = string_end(&c, i + 1, None),
            ('\'', '\\') => i = skip(&c, i + 3, |ch| ch != '\'') + 1,
            ('\'', _) if at(i + 2) == '\'' => i += 3,
            (':', ':') => (out.push(("::".to_owned(), line)), i += 2).1,
            (ch, _) if is_ident_char(ch) => {
                i = skip(&c, i, is_ident_char);
                let word: String = c[start..i].iter().collect();
                let hashes = skip(&c, i, |ch| ch == '#') - i;
                if matches!(word.as_str(), "r" | "br" | "cr") && at(i + hashes) == '"' {
                    i = string_end(&c, i + hashes + 1, Some(hashes));
                } else {
                    out.push((word, line));
                }
            }
            (ch, _) => {
                out.extend((!ch.is_whitespace()).then(|| (ch.to_string(), line)));
                i += 1;
            }
        }
        i = i.min(c.len());
        line += c[start..i].iter().filter(|&&ch| ch == '\n').count();
    }
    out
}

/// The index of the first char at or after `from` that is not `while_`, or the end.
fn skip(c: &[char], from: usize, while_: fn(char) -> bool) -> usize {
    (from..c.len()).find(|&i| !while_(c[i])).unwrap_or(c.len())
}

/// The index after the string whose body starts at `i`; `raw` is a raw string's `#` count.
fn string_end(c: &[char], mut i: usize, raw: Option<usize>) -> usize {
    while i < c.len() {
        match (c[i], raw) {
            ('\\', None) => i += 2,
            ('"', None) => return i + 1,
            ('"', Some(n)) if skip(c, i + 1, |ch| ch == '#') >= i + 1 + n => return i + 1 + n,
            _ => i += 1,
        }
    }
    i
}

fn is_ident_char(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_'
}

fn is_word(tok: &str) -> bool {
    tok.starts_with(|ch: char| ch.is_alphabetic() || ch == '_') && tok.chars().all(is_ident_char)
}

fn tok(t: &[Tok], i: usize) -> &str {
    t.get(i).map_or("", |(s, _)| s.as_str())
}

/// A path as written in a file: the inline modules it sits in, its segments, and its line (of
/// the segment after `crate`/`super`/`self`, the one that names the module).
#[derive(Clone)]
struct PathRef {
    inline: Vec<String>,
    segs: Vec<String>,
    line: usize,
}

impl PathRef {
    fn new(inline: &[String], segs: &[Tok]) -> Self {
        let line = segs.get(1).or(segs.first()).map_or(0, |s| s.1);
        let (inline, segs) = (inline.to_vec(), segs.iter().map(|s| s.0.clone()).collect());
        PathRef { inline, segs, line }
    }
}

/// What the graph needs from one file.
#[derive(Default)]
struct Parsed {
    /// Module paths within the file of `mod x;` (true) and `mod x { .. }` (false).
    mods: Vec<(Vec<String>, bool)>,
    /// Every path of two or more segments, in `use` or in code.
    paths: Vec<PathRef>,
    /// Names that `use` binds (globs bind none), and the paths they stand for.
    imports: Vec<(String, PathRef)>,
}

/// A path of a `use` tree, its `as` name, and whether it ends in `*`.
type Leaf = (Vec<Tok>, Option<String>, bool);

/// The paths of the `use` tree at `t[*i]` under `prefix`, through nested braces.
fn use_tree(t: &[Tok], i: &mut usize, prefix: &[Tok], out: &mut Vec<Leaf>) {
    let mut segs = prefix.to_vec();
    loop {
        match tok(t, *i) {
            "{" => {
                *i += 1;
                while !matches!(tok(t, *i), "}" | ";" | "") {
                    let before = *i;
                    use_tree(t, i, &segs, out);
                    *i += usize::from(tok(t, *i) == "," || *i == before);
                }
                return *i += 1;
            }
            "*" => return (*i += 1, out.push((segs, None, true))).1,
            // `::std::x` names an extern crate: a `::` segment resolves to nothing.
            "::" if segs.is_empty() => (segs.push(t[*i].clone()), *i += 1).1,
            word if is_word(word) => {
                segs.push(t[*i].clone());
                *i += 1;
                if tok(t, *i) == "::" {
                    *i += 1;
                    continue;
                }
                let alias = (tok(t, *i) == "as").then(|| tok(t, *i + 1).to_owned());
                *i += if alias.is_some() { 2 } else { 0 };
                return out.push((segs, alias, false));
            }
            _ => return,
        }
    }
}

fn parse(src: &str) -> Parsed {
    let t = tokens(src);
    let mut p = Parsed::default();
    let mut braces: Vec<Option<String>> = Vec::new(); // `Some(x)` closes `mod x {`
    let mut i = 0;
    while i < t.len() {
        let inline: Vec<String> = braces.iter().flatten().cloned().collect();
        match tok(&t, i) {
            "mod" if is_word(tok(&t, i + 1)) && matches!(tok(&t, i + 2), ";" | "{") => {
                let (name, is_file) = (tok(&t, i + 1).to_owned(), tok(&t, i + 2) == ";");
                let path = [inline, vec![name.clone()]].concat();
                p.mods.push((path, is_file));
                braces.extend((!is_file).then_some(Some(name)));
                i += 3;
            }
            "use" => {
                i += 1;
                let mut leaves = Vec::new();
                use_tree(&t, &mut i, &[], &mut leaves);
                for (mut segs, alias, glob) in leaves {
                    if segs.len() > 1 && segs.last().is_some_and(|s| s.0 == "self") {
                        segs.pop(); // `use a::{self}` binds `a`
                    }
                    let r = PathRef::new(&inline, &segs);
                    match alias.or(r.segs.last().cloned()) {
                        Some(name) if !glob && name != "_" => p.imports.push((name, r.clone())),
                        _ => {}
                    }
                    p.paths.push(r);
                }
                i += t[i..].iter().position(|s| s.0 == ";").unwrap_or(0);
            }
            "{" => (braces.push(None), i += 1).1,
            "}" => (braces.pop(), i += 1).1,
            word if is_word(word) && (i == 0 || tok(&t, i - 1) != "::") => {
                let mut j = i;
                while tok(&t, j + 1) == "::" && is_word(tok(&t, j + 2)) {
                    j += 2;
                }
                if j > i {
                    let segs: Vec<Tok> = t[i..=j].iter().step_by(2).cloned().collect();
                    p.paths.push(PathRef::new(&inline, &segs));
                }
                i = j + 1;
            }
            _ => i += 1,
        }
    }
    p
}

/// A module tree: files (path, module path, contents), modules, and what each name bound by
/// `use` stands for (`None`: outside the crate).
struct Tree {
    files: Vec<(PathBuf, Vec<String>, Parsed)>,
    modules: HashSet<Vec<String>>,
    imports: HashMap<Vec<String>, Option<Vec<String>>>,
}

impl Tree {
    /// The module tree that starts at `root_file`, found through its `mod x;` declarations.
    fn load(root_file: &Path) -> io::Result<Self> {
        let (mut files, mut todo) = (Vec::new(), vec![(root_file.to_path_buf(), vec![], true)]);
        let mut modules = HashSet::new(); // of files and inline, all declared by a parent
        while let Some((path, module, owns_dir)) = todo.pop() {
            let parsed = parse(&fs::read_to_string(&path)?);
            modules.extend(parsed.mods.iter().map(|(m, _)| [&module[..], m].concat()));
            // A crate root and a `mod.rs` keep their children beside them, `a.rs` in `a/`.
            let dir = match path.parent() {
                Some(parent) if owns_dir => parent.to_path_buf(),
                _ => path.with_extension(""),
            };
            for (inner, _) in parsed.mods.iter().filter(|(_, is_file)| *is_file) {
                let dir = inner.iter().fold(dir.clone(), |dir, m| dir.join(m));
                let module = [&module[..], inner].concat();
                let flat = dir.with_extension("rs");
                let owns_dir = !flat.is_file();
                let path = if owns_dir { dir.join("mod.rs") } else { flat };
                todo.extend(path.is_file().then_some((path, module, owns_dir)));
            }
            files.push((path, module, parsed));
        }
        let mut tree = Tree {
            files,
            modules,
            imports: HashMap::new(),
        };
        for (_, module, parsed) in &tree.files {
            for (name, target) in &parsed.imports {
                let module = [&module[..], &target.inline].concat();
                let abs = tree.absolute(&module, &target.segs);
                let name = [module, vec![name.clone()]].concat();
                tree.imports.insert(name, abs);
            }
        }
        Ok(tree)
    }

    /// `segs`, written in `module`, as a path from the crate root; `None` if it leaves the crate.
    fn absolute(&self, module: &[String], segs: &[String]) -> Option<Vec<String>> {
        let (mut base, mut rest) = (module.to_vec(), segs);
        let child = [module, &segs[..1.min(segs.len())]].concat();
        match segs.first()?.as_str() {
            "crate" => (base.clear(), rest = &segs[1..]).1,
            "self" | "super" => {
                while let Some(first) = rest.first().filter(|s| *s == "self" || *s == "super") {
                    if first == "super" {
                        base.pop()?;
                    }
                    rest = &rest[1..];
                }
            }
            // Any other path stays in the crate only if it starts with a child module.
            _ if !self.modules.contains(&child) => return None,
            _ => {}
        }
        Some([&base[..], rest].concat())
    }

    /// The file that holds what `abs` names: the deepest file of its module path, or, through a
    /// name bound by `use` (`pub use a::X` in `lib.rs`), the file of what it stands for.
    fn resolve(&self, abs: &[String], hops: usize) -> Option<usize> {
        let file_at = |k: usize| self.files.iter().position(|f| f.1 == abs[..k]);
        let (k, file) = (0..=abs.len()).rev().find_map(|k| Some((k, file_at(k)?)))?;
        for j in (k..abs.len()).filter(|_| hops < 8) {
            if let Some(to) = self.imports.get(&abs[..=j]) {
                return self.resolve(&[&to.clone()?[..], &abs[j + 1..]].concat(), hops + 1);
            }
        }
        Some(file)
    }

    /// Each edge F -> G (F mentions a path into G), with the lines of F that make it.
    fn edges(&self) -> BTreeMap<(usize, usize), BTreeSet<usize>> {
        let mut edges: BTreeMap<_, BTreeSet<_>> = BTreeMap::new();
        for (from, (_, module, parsed)) in self.files.iter().enumerate() {
            for r in &parsed.paths {
                let abs = self.absolute(&[&module[..], &r.inline].concat(), &r.segs);
                let to = abs.and_then(|abs| self.resolve(&abs, 0));
                if let Some(to) = to.filter(|&to| to != from) {
                    edges.entry((from, to)).or_default().insert(r.line);
                }
            }
        }
        edges
    }
}

/// The report of every import circle among the files of a module tree of a member.
fn import_circles(root: &Path) -> io::Result<Vec<String>> {
    let mut circles = BTreeMap::new();
    for member in members(root)? {
        for root_file in crate_roots(&root.join(&member))? {
            circles.extend(circles_in(root, &Tree::load(&root_file)?)?);
        }
    }
    Ok(circles.into_values().collect())
}

/// The report of each circle of `tree`, keyed by its sorted files.
fn circles_in(root: &Path, tree: &Tree) -> io::Result<BTreeMap<Vec<String>, String>> {
    let edges = tree.edges();
    let mut adj = vec![Vec::new(); tree.files.len()];
    edges.keys().for_each(|&(from, to)| adj[from].push(to));
    let name = |i: usize| rel(root, &tree.files[i].0);
    let mut circles = BTreeMap::new();
    for scc in sccs(&adj).into_iter().filter(|scc| scc.len() > 1) {
        let mut files: Vec<String> = scc.iter().map(|&i| name(i)).collect();
        files.sort();
        let mut report = format!("{} files: {}", files.len(), files.join(", "));
        let both = |(a, b): &(usize, usize)| scc.contains(a) && scc.contains(b);
        let mut inside: Vec<_> = edges.iter().filter(|(edge, _)| both(edge)).collect();
        inside.sort_by_key(|((a, b), _)| (name(*a), name(*b)));
        for (&(a, b), at) in inside {
            let (from, to, src) = (name(a), name(b), fs::read_to_string(&tree.files[a].0)?);
            for &n in at {
                let line = src.lines().nth(n - 1).unwrap_or("").trim();
                let text: String = line.chars().take(100).collect();
                report += &format!("\n    {from}:{n} -> {to}: {text}");
            }
        }
        circles.insert(files, report);
    }
    Ok(circles)
}

/// The strongly connected components of `adj`, by Kosaraju's algorithm: searches of the
/// reversed graph, started in the reverse of the order a search of `adj` finishes nodes.
fn sccs(adj: &[Vec<usize>]) -> Vec<Vec<usize>> {
    fn search(adj: &[Vec<usize>], v: usize, seen: &mut [bool], finished: &mut Vec<usize>) {
        if !std::mem::replace(&mut seen[v], true) {
            adj[v].iter().for_each(|&w| search(adj, w, seen, finished));
            finished.push(v);
        }
    }
    let n = adj.len();
    let (mut seen, mut order) = (vec![false; n], Vec::new());
    (0..n).for_each(|v| search(adj, v, &mut seen, &mut order));
    let mut reversed = vec![Vec::new(); n];
    (0..n).for_each(|v| adj[v].iter().for_each(|&w| reversed[w].push(v)));
    let (mut seen, mut out) = (vec![false; n], Vec::new());
    for &v in order.iter().rev() {
        let mut scc = Vec::new();
        search(&reversed, v, &mut seen, &mut scc);
        out.extend((!scc.is_empty()).then_some(scc));
    }
    out
}

/// Files over [`MAX_LINES`] not in `allowed` (and stale entries of it), and files under `src/`
/// that do not open with a `//!` line.
fn file_checks(root: &Path, allowed: &[(&str, &str)]) -> io::Result<[Vec<String>; 2]> {
    let (mut long, mut undocumented) = (Vec::new(), Vec::new());
    let mut files = rs_files(&root.join("fuzz/fuzz_targets"))?;
    for member in members(root)? {
        for dir in ["src", "tests", "benches", "examples"] {
            files.extend(rs_files(&root.join(&member).join(dir))?);
        }
        for path in rs_files(&root.join(&member).join("src"))? {
            if !opens_with_doc(&fs::read_to_string(&path)?) {
                undocumented.push(rel(root, &path));
            }
        }
    }
    for path in files {
        let (name, lines) = (rel(root, &path), fs::read_to_string(&path)?.lines().count());
        if lines > MAX_LINES && !allowed.iter().any(|(allowed, _)| *allowed == name) {
            long.push(format!("{name}: {lines} lines"));
        }
    }
    for (name, _) in allowed {
        let stale = match fs::read_to_string(root.join(name)).map(|src| src.lines().count()) {
            Err(_) => Some("gone".to_owned()),
            Ok(n) => (n <= MAX_LINES).then(|| format!("{n} lines now")),
        };
        long.extend(stale.map(|why| format!("{name}: in ALLOWED_LONG but {why}: remove it")));
    }
    Ok([long, undocumented])
}

/// Whether `src` opens with a `//!` line of text, after any licence header.
fn opens_with_doc(src: &str) -> bool {
    let mut in_header = false;
    for line in src.lines().map(str::trim) {
        if in_header {
            in_header = !line.contains("*/");
        } else if line.starts_with("/*") && !line.starts_with("/*!") {
            in_header = !line[2..].contains("*/");
        } else if !(line.is_empty() || (line.starts_with("//") && !line.starts_with("//!"))) {
            let doc = line.strip_prefix("//!").or(line.strip_prefix("/*!"));
            return doc.is_some_and(|text| !text.trim().is_empty());
        }
    }
    false
}

/// The checks on this workspace. While it fails, its message says what to fix.
#[test]
fn workspace_layout() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let report = check(&root).expect("read the workspace");
    assert!(report.is_empty(), "layout check failed:\n{report}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `check` run on a workspace of one crate `a` written to a fresh temporary directory (and
    /// removed after); `files` holds each file of `a` after a `== path` line.
    fn scratch<T>(name: &str, files: &str, check: impl Fn(&Path) -> io::Result<T>) -> T {
        let dir = std::env::temp_dir().join(format!("mesh-layout-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let files =
            format!("\n== ../Cargo.toml\n[workspace]\nmembers = [\n  \"a\", # a\n]\n{files}");
        for file in files.split("\n== ").skip(1) {
            let (path, text) = file.split_once('\n').expect("a `== path` line");
            let path = dir.join("a").join(path);
            fs::create_dir_all(path.parent().expect("a parent")).expect("create a directory");
            fs::write(&path, text).expect("write a file");
        }
        let result = check(&dir);
        let _ = fs::remove_dir_all(&dir);
        result.expect("check the scratch workspace")
    }

    /// Asserts the circles' first report lines (without `a/src/`) are `want`; returns the report.
    fn assert_circles(name: &str, files: &str, want: &[&str]) -> String {
        let circles = scratch(name, files, import_circles);
        let heads: Vec<&str> = circles.iter().filter_map(|c| c.lines().next()).collect();
        assert_eq!(heads.join("\n").replace("a/src/", ""), want.join("\n"));
        circles.join("\n")
    }

    fn assert_has(report: &str, text: &str) {
        assert!(report.contains(text), "no {text:?} in:\n{report}");
    }

    #[test]
    fn a_circle_through_use() {
        let files = "== src/lib.rs\n//! Root.\nmod x;\nmod y;\n== src/x.rs\nuse crate::y::Y;\n\
            == src/y.rs\n//! Y.\npub(crate) use crate::x::X as Renamed;\npub struct Y;\n";
        let report = assert_circles("use", files, &["2 files: x.rs, y.rs"]);
        assert_has(&report, "a/src/x.rs:1 -> a/src/y.rs: use crate::y::Y;");
        assert_has(&report, "a/src/y.rs:2 -> a/src/x.rs: pub(crate) use");
    }

    #[test]
    fn a_circle_through_an_inline_crate_path() {
        let files = "== src/lib.rs\n//! Root.\nmod x;\nmod y;\n\
            == src/x.rs\n//! X.\npub fn f() -> Vec<crate::y::Y> { Vec::new() }\n\
            == src/y.rs\n//! Y.\npub struct Y;\nfn g() { let _ = crate::x::f::<u8>(); }\n";
        assert_circles("inline", files, &["2 files: x.rs, y.rs"]);
    }

    #[test]
    fn a_circle_through_super_from_a_child_of_a_mod_rs() {
        let files = "== src/lib.rs\npub mod p;\n\
            == src/p/mod.rs\nmod c;\npub struct P;\nfn f() { c::go() }\n\
            == src/p/c.rs\nuse super::P;\npub fn go() {}\n";
        assert_circles("super", files, &["2 files: p/c.rs, p/mod.rs"]);
    }

    #[test]
    fn a_parent_that_only_declares_its_child_is_no_circle() {
        let files = "== src/lib.rs\n//! Root.\npub mod x;\npub struct Root;\n\
            == src/x.rs\nmod y;\nuse crate::Root;\n#[cfg(test)]\nmod tests { use super::*; }\n\
            == src/x/y.rs\n//! Y.\nuse super::super::Root;\n";
        assert_circles("mod", files, &[]);
    }

    #[test]
    fn a_brace_nested_multi_line_use_tree() {
        let files = "== src/lib.rs\n//! Root.\nmod x;\nmod y;\nmod z;\n\
            == src/x.rs\n//! X.\nuse crate::{\n    y::{self, Y},\n    z::{Z},\n};\npub struct X;\n\
            == src/y.rs\npub struct Y;\n\
            == src/z.rs\nfn c() -> [char; 2] { ['\"', '\\''] }\nfn f(_: crate::x::X) {}\n";
        let report = assert_circles("braces", files, &["2 files: x.rs, z.rs"]);
        assert_has(&report, "a/src/x.rs:4 -> a/src/z.rs: z::{Z},");
    }

    #[test]
    fn doc_comments_and_string_literals_make_no_edge() {
        let files = "== src/lib.rs\n//! Root: see [`crate::x`].\nmod x;\nmod y;\n\
            == src/x.rs\n//! X, not [crate::y::Y].\n/// [`crate::y::Y`]\n\
            /* crate::y /* */ crate::y */\npub fn f() -> [&'static str; 2] {\n\
            [\"crate::y\\\" crate::y\", r#\"crate::y\" crate::y\"#] }\n\
            == src/y.rs\n//! Y.\npub struct Y;\nfn g() { let _ = ('\\'', crate::x::f()); }\n";
        assert_circles("docs", files, &[]);
    }

    #[test]
    fn a_re_export_from_the_crate_root_points_at_its_source() {
        let files = "== src/lib.rs\nmod x;\nmod y;\npub use crate::x::X;\npub use y::Y;\n\
            == src/x.rs\npub struct X(crate::Y);\n== src/y.rs\npub struct Y;\n";
        assert_circles("reexport", files, &[]);
    }

    #[test]
    fn long_files_and_missing_doc_lines() {
        let long = "//! Long.\n".repeat(MAX_LINES + 1);
        let files = format!(
            "== src/lib.rs\n// Licence header.\n\n//! Root.\nmod x;\nmod y;\n\
             == src/x.rs\n/* Licence\n   header. */\n//!\npub struct X;\n\
             == src/y.rs\n{long}== tests/t.rs\n{long}"
        );
        let allowed = [("a/tests/t.rs", ""), ("a/src/x.rs", ""), ("a/no.rs", "")];
        let [long, undocumented] = scratch("long", &files, |root| file_checks(root, &allowed));
        assert_eq!(undocumented, ["a/src/x.rs"]);
        let want = "a/src/y.rs: 601 lines\n\
            a/src/x.rs: in ALLOWED_LONG but 4 lines now: remove it\n\
            a/no.rs: in ALLOWED_LONG but gone: remove it";
        assert_eq!(long.join("\n"), want);
    }
}
