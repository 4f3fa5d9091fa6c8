//! The file source: the same SipTrunk, PhoneNumber and Secret manifests a user
//! would `kubectl apply`, read from a directory. It is the embedded default
//! for local runs, the demo and tests, and reacts to file changes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use foldhash::HashMap;
use k8s_openapi::api::core::v1::Secret;
use notify::{RecursiveMode, Watcher};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::crd::{PhoneNumber, SipTrunk};
use crate::routing::index::Event;
use crate::routing::{Inputs, NumberInput, ObjectKey, SecretData, TrunkInput};

/// Namespace given to objects that name none, as kubectl would.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Errors that stop reading a directory at all.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The directory could not be listed.
    #[error("cannot read manifest directory {path}: {source}")]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Watching the directory failed.
    #[error("cannot watch {path}: {source}")]
    Watch {
        /// The directory.
        path: PathBuf,
        /// The notify error.
        source: notify::Error,
    },
}

/// A document that could not be used; the rest of the files still load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// `file` or `file#doc`.
    pub location: String,
    /// What is wrong; never contains Secret values.
    pub message: String,
}

/// Everything read from a directory.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Objects for the resolver.
    pub inputs: Inputs,
    /// Documents that were skipped, with why.
    pub problems: Vec<Problem>,
}

fn is_manifest(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// A manifest directory read again on every change. A file that cannot be
/// read or parsed (an editor halfway through saving it, a typo) keeps its
/// last good content, so a bad save never withdraws numbers from the fleet;
/// the problem is reported all the same.
///
/// Only changed files are parsed, and only the objects whose effective
/// definition changed become events: a one-number edit next to 100,000
/// numbers costs one file's parse, not a rebuild of the world.
#[derive(Debug)]
pub struct Directory {
    dir: PathBuf,
    files: BTreeMap<String, FileState>,
    /// Files defining each object, in name order; the last one wins.
    /// Almost always one file: a sorted list of shared names, not a tree
    /// and a copy of the name per object.
    owners: HashMap<Owned, Vec<Arc<str>>>,
}

#[derive(Debug)]
struct FileState {
    stamp: Stamp,
    objects: Objects,
    problems: Vec<Problem>,
}

/// One file's objects. Numbers are shared with the events (and so with the
/// index) rather than copied.
#[derive(Debug, Default)]
struct Objects {
    trunks: BTreeMap<ObjectKey, TrunkInput>,
    numbers: BTreeMap<ObjectKey, Arc<NumberInput>>,
    secrets: BTreeMap<ObjectKey, SecretData>,
}

impl From<Inputs> for Objects {
    fn from(i: Inputs) -> Self {
        Objects {
            trunks: i.trunks,
            numbers: i
                .numbers
                .into_iter()
                .map(|(k, n)| (k, Arc::new(n)))
                .collect(),
            secrets: i.secrets,
        }
    }
}

/// An object as files define it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Owned {
    Trunk(ObjectKey),
    Number(ObjectKey),
    Secret(ObjectKey),
}

/// What a reload found.
#[derive(Debug, Default)]
pub struct Reload {
    /// Objects whose effective definition changed.
    pub events: Vec<Event>,
    /// Every document currently skipped, in file order.
    pub problems: Vec<Problem>,
}

/// What identifies a file's content without reading it: size and mtime.
type Stamp = Option<(u64, std::time::SystemTime)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

fn owned_keys(i: &Objects) -> impl Iterator<Item = Owned> + '_ {
    i.trunks
        .keys()
        .map(|k| Owned::Trunk(k.clone()))
        .chain(i.numbers.keys().map(|k| Owned::Number(k.clone())))
        .chain(i.secrets.keys().map(|k| Owned::Secret(k.clone())))
}

impl Directory {
    /// A directory not read yet.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
            owners: HashMap::default(),
        }
    }

    /// Reads the directory again and returns every object as one set (for
    /// one-shot checks and tests; the operator uses [`Directory::reload`]).
    pub fn load(&mut self) -> Result<Loaded, Error> {
        let r = self.reload()?;
        let mut inputs = Inputs::default();
        for f in self.files.values() {
            inputs
                .trunks
                .extend(f.objects.trunks.iter().map(|(k, v)| (k.clone(), v.clone())));
            inputs.numbers.extend(
                f.objects
                    .numbers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_ref().clone())),
            );
            inputs.secrets.extend(
                f.objects
                    .secrets
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone())),
            );
        }
        Ok(Loaded {
            inputs,
            problems: r.problems,
        })
    }

    /// A Secret as the files define it now.
    pub fn secret(&self, key: &ObjectKey) -> Option<SecretData> {
        match self.effective(&Owned::Secret(key.clone()))? {
            Event::Secret(_, d) => Some(d),
            _ => None,
        }
    }

    /// The effective definition of an object: from the last file defining it.
    fn effective(&self, o: &Owned) -> Option<Event> {
        let file = self.owners.get(o)?.last()?;
        let objects = &self.files.get(&**file)?.objects;
        match o {
            Owned::Trunk(k) => objects
                .trunks
                .get(k)
                .cloned()
                .map(|t| Event::Trunk(Box::new(t))),
            Owned::Number(k) => objects.numbers.get(k).cloned().map(Event::Number),
            Owned::Secret(k) => objects
                .secrets
                .get(k)
                .cloned()
                .map(|d| Event::Secret(k.clone(), d)),
        }
    }

    fn effective_eq(a: &Option<Event>, b: &Option<Event>) -> bool {
        match (a, b) {
            (None, None) => true,
            (Some(Event::Trunk(x)), Some(Event::Trunk(y))) => x == y,
            (Some(Event::Number(x)), Some(Event::Number(y))) => x == y,
            (Some(Event::Secret(_, x)), Some(Event::Secret(_, y))) => x == y,
            _ => false,
        }
    }

    /// Reads every `*.yaml`, `*.yml` and `*.json` file in the directory (not
    /// recursive) whose size or mtime changed, and returns the objects whose
    /// effective definition changed.
    pub fn reload(&mut self) -> Result<Reload, Error> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| Error::ReadDir {
            path: self.dir.clone(),
            source,
        })?;
        let mut present: BTreeMap<String, PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_manifest(p))
            .map(|p| {
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (name, p)
            })
            .collect();
        // Objects whose effective definition may have changed, with it.
        let mut touched: HashMap<Owned, Option<Event>> = HashMap::default();
        let gone: Vec<String> = self
            .files
            .keys()
            .filter(|f| !present.contains_key(*f))
            .cloned()
            .collect();
        for name in gone {
            self.replace_file(&name, None, &mut touched);
        }
        for (name, path) in std::mem::take(&mut present) {
            let st = stamp(&path);
            // An unchanged file is not parsed again (large number lists).
            if let Some(f) = self.files.get(&name)
                && st.is_some()
                && f.stamp == st
            {
                continue;
            }
            let mut loaded = Loaded::default();
            let parsed = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read: {e}"))
                .and_then(|text| read_docs(&name, &text, &mut loaded));
            let state = match parsed {
                Ok(()) => FileState {
                    stamp: st,
                    objects: loaded.inputs.into(),
                    problems: loaded.problems,
                },
                Err(message) => match self.files.remove(&name) {
                    // The old stamp is dropped so the next load parses again.
                    Some(mut kept) => {
                        kept.stamp = None;
                        kept.problems = vec![Problem {
                            location: name.clone(),
                            message: format!("{message}; keeping its last good version"),
                        }];
                        self.files.insert(name.clone(), kept);
                        continue;
                    }
                    None => FileState {
                        stamp: None,
                        objects: Objects::default(),
                        problems: vec![Problem {
                            location: name.clone(),
                            message,
                        }],
                    },
                },
            };
            self.replace_file(&name, Some(state), &mut touched);
        }
        let mut events = Vec::new();
        let mut touched: Vec<(Owned, Option<Event>)> = touched.into_iter().collect();
        // Secrets first, then trunks, then numbers: fewer transient verdicts
        // within one batch (the index handles any order).
        touched.sort_by_key(|(o, _)| match o {
            Owned::Secret(_) => 0,
            Owned::Trunk(_) => 1,
            Owned::Number(_) => 2,
        });
        for (o, before) in touched {
            let after = self.effective(&o);
            if Self::effective_eq(&before, &after) {
                continue;
            }
            events.push(match (after, o) {
                (Some(e), _) => e,
                (None, Owned::Trunk(k)) => Event::TrunkDeleted(k),
                (None, Owned::Number(k)) => Event::NumberDeleted(k),
                (None, Owned::Secret(k)) => Event::SecretDeleted(k),
            });
        }
        let problems = self
            .files
            .values()
            .flat_map(|f| f.problems.iter().cloned())
            .collect();
        Ok(Reload { events, problems })
    }

    /// Replaces (or removes) one file's objects, remembering the effective
    /// definition of everything it defined before or defines now.
    fn replace_file(
        &mut self,
        name: &str,
        new: Option<FileState>,
        touched: &mut HashMap<Owned, Option<Event>>,
    ) {
        let old_keys: Vec<Owned> = self
            .files
            .get(name)
            .map(|f| owned_keys(&f.objects).collect())
            .unwrap_or_default();
        let new_keys: Vec<Owned> = new
            .as_ref()
            .map(|f| owned_keys(&f.objects).collect())
            .unwrap_or_default();
        touched.reserve(new_keys.len());
        for o in old_keys.iter().chain(new_keys.iter()) {
            if !touched.contains_key(o) {
                let before = self.effective(o);
                touched.insert(o.clone(), before);
            }
        }
        for o in old_keys {
            if let Some(files) = self.owners.get_mut(&o) {
                files.retain(|f| &**f != name);
                if files.is_empty() {
                    self.owners.remove(&o);
                }
            }
        }
        let shared: Arc<str> = Arc::from(name);
        self.owners.reserve(new_keys.len());
        for o in new_keys {
            let files = self.owners.entry(o).or_default();
            if let Err(at) = files.binary_search_by(|f| (**f).cmp(name)) {
                files.insert(at, shared.clone());
            }
        }
        match new {
            Some(f) => {
                self.files.insert(name.to_string(), f);
            }
            None => {
                self.files.remove(name);
            }
        }
    }
}

/// Reads a file's documents into `loaded`. A large file is cut at document
/// markers into one piece per core, parsed in parallel; each piece is read
/// one document at a time, so only one parsed document per thread is held
/// besides the objects made so far (parsing 100,000 documents whole first
/// took hundreds of megabytes, and touching fresh memory is much of the
/// cost of a large load).
///
/// libyaml (through `serde_yaml_ng`) reads a 100,000-document number list
/// about four times faster than `serde-saphyr` (0.8 s against 3.8 s on the
/// benchmark machine), and still bounds nesting depth and alias expansion.
/// One bad document fails the whole file (the caller drops what was read),
/// so the file keeps its last good version rather than losing the documents
/// after the bad one. The error never quotes file content.
fn read_docs(file: &str, text: &str, loaded: &mut Loaded) -> Result<(), String> {
    let parts = split_documents(text, parse_threads(text.len()));
    let read: Vec<Result<Part, String>> = if parts.len() < 2 {
        vec![read_part(text)]
    } else {
        std::thread::scope(|s| {
            let running: Vec<_> = parts
                .iter()
                .map(|part| s.spawn(move || read_part(part)))
                .collect();
            running
                .into_iter()
                .map(|t| {
                    t.join()
                        .unwrap_or_else(|_| Err("the YAML parser failed".to_string()))
                })
                .collect()
        })
    };
    let read: Vec<Part> = match read.into_iter().collect() {
        Ok(parts) => parts,
        // A split can only fail where the whole text fails, but the whole
        // text's error is the one to report.
        Err(e) if parts.len() < 2 => return Err(e),
        Err(_) => vec![read_part(text)?],
    };
    let mut first = 0;
    for mut part in read {
        // Later documents win, as they would read in order.
        loaded.inputs.trunks.append(&mut part.inputs.trunks);
        loaded.inputs.numbers.append(&mut part.inputs.numbers);
        loaded.inputs.secrets.append(&mut part.inputs.secrets);
        for (i, message) in part.problems {
            loaded.problems.push(Problem {
                location: format!("{file}#{}", first + i + 1),
                message,
            });
        }
        first += part.documents;
    }
    Ok(())
}

/// Below this size a file is parsed on one thread.
const PARALLEL_PARSE_BYTES: usize = 1 << 20;

fn parse_threads(len: usize) -> usize {
    if len < PARALLEL_PARSE_BYTES {
        return 1;
    }
    std::thread::available_parallelism()
        .map(|n| n.get().min(4))
        .unwrap_or(1)
}

/// Splits a YAML stream into about `parts` pieces of whole documents. A
/// piece starts at a `---` marker at the start of a line: YAML forbids that
/// sequence inside any scalar, so it always begins a document. (A directive
/// before such a marker would be cut from its document; the piece ending in
/// it fails, and the caller parses the text whole.)
fn split_documents(text: &str, parts: usize) -> Vec<&str> {
    let mut out = Vec::with_capacity(parts);
    let mut start = 0;
    for k in 1..parts {
        let target = (text.len() * k / parts).max(start);
        let Some(at) = next_marker(text, target) else {
            break;
        };
        if at > start {
            out.push(&text[start..at]);
            start = at;
        }
    }
    out.push(&text[start..]);
    out
}

/// The byte offset of the first line at or after `from` that is a document
/// start marker.
fn next_marker(text: &str, from: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut pos = from;
    while let Some(i) = memchr_newline(&bytes[pos..]) {
        let line = pos + i + 1;
        let rest = &bytes[line..];
        if rest.starts_with(b"---")
            && rest
                .get(3)
                .is_none_or(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
        {
            return Some(line);
        }
        pos = line;
    }
    None
}

fn memchr_newline(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

/// One piece's objects, its problems by document (counted from the piece's
/// first), and how many documents it holds.
#[derive(Default)]
struct Part {
    inputs: Inputs,
    problems: Vec<(usize, String)>,
    documents: usize,
}

fn read_part(text: &str) -> Result<Part, String> {
    use serde::Deserialize;
    let mut part = Part::default();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        part.documents = i + 1;
        let doc = Value::deserialize(doc).map_err(|e| yaml_error(&e))?;
        if doc.is_null() {
            continue;
        }
        if let Err(message) = load_doc(doc, &mut part.inputs) {
            part.problems.push((i, message));
        }
    }
    Ok(part)
}

fn yaml_error(e: &serde_yaml_ng::Error) -> String {
    // The message names the location and token kinds, but a Secret may be
    // in this file: show the first line only.
    let msg = e.to_string();
    format!(
        "invalid YAML: {}",
        msg.lines().next().unwrap_or("unparsable")
    )
}

/// Parses a text's documents whole (for tests of the YAML limits).
#[cfg(test)]
fn parse(text: &str) -> Result<Vec<Value>, String> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).map_err(|e| yaml_error(&e)))
        .collect()
}

/// Adds the documents in one file's text; a file that is not valid YAML
/// adds nothing but its problem.
pub fn load_text(file: &str, text: &str, loaded: &mut Loaded) {
    let mut read = Loaded::default();
    match read_docs(file, text, &mut read) {
        Ok(()) => {
            loaded.inputs.trunks.append(&mut read.inputs.trunks);
            loaded.inputs.numbers.append(&mut read.inputs.numbers);
            loaded.inputs.secrets.append(&mut read.inputs.secrets);
            loaded.problems.append(&mut read.problems);
        }
        Err(message) => loaded.problems.push(Problem {
            location: file.into(),
            message,
        }),
    }
}

fn with_namespace(mut doc: Value) -> Value {
    if let Some(meta) = doc.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.entry("namespace")
            .or_insert_with(|| Value::String(DEFAULT_NAMESPACE.into()));
    }
    doc
}

fn load_doc(doc: Value, inputs: &mut Inputs) -> Result<(), String> {
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let api_version = doc
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if name.is_empty() {
        return Err(format!("{kind} has no metadata.name"));
    }
    let doc = with_namespace(doc);
    match (api_version.as_str(), kind.as_str()) {
        ("switchboard.dev/v1alpha1", "SipTrunk") => {
            let t: SipTrunk =
                serde_json::from_value(doc).map_err(|e| format!("SipTrunk {name}: {e}"))?;
            inputs.add_trunk(&t);
        }
        ("switchboard.dev/v1alpha1", "PhoneNumber") => {
            let n: PhoneNumber =
                serde_json::from_value(doc).map_err(|e| format!("PhoneNumber {name}: {e}"))?;
            inputs.add_owned_number(n);
        }
        ("v1", "Secret") => {
            // serde's message could quote a value: say only what is wrong.
            let s: Secret = serde_json::from_value(doc).map_err(|_| {
                format!(
                    "Secret {name}: malformed (data values must be base64, stringData values text)"
                )
            })?;
            let key = ObjectKey::new(
                s.metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
                name,
            );
            inputs.secrets.insert(key, SecretData::from(&s));
        }
        _ => {
            return Err(format!(
                "ignored {api_version} {kind} {name}: not a SipTrunk, PhoneNumber or Secret"
            ));
        }
    }
    Ok(())
}

/// Sends `()` whenever something in `dir` changes (bursts are coalesced by
/// the receiver). The returned watcher must be kept alive.
pub fn watch(dir: &Path) -> Result<(notify::RecommendedWatcher, mpsc::Receiver<()>), Error> {
    let (tx, rx) = mpsc::channel(1);
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            // A full channel already holds a pending change.
            let _ = tx.try_send(());
        }
    })
    .map_err(|source| Error::Watch {
        path: dir.into(),
        source,
    })?;
    w.watch(dir, RecursiveMode::NonRecursive)
        .map_err(|source| Error::Watch {
            path: dir.into(),
            source,
        })?;
    Ok((w, rx))
}

/// Quiet time after a file event before reloading (editors write in steps).
pub const SETTLE: Duration = Duration::from_millis(20);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_bombs_and_deep_nesting_are_refused_not_expanded() {
        // Nine levels of ten aliases each would expand to 10^9 strings.
        let mut bomb = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h"]
            .iter()
            .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
        {
            bomb.push_str(&format!(
                "{name}: &{name} [{}]\n",
                vec![format!("*{prev}"); 10].join(",")
            ));
        }
        let err = parse(&bomb).expect_err("an alias bomb is refused");
        assert!(err.starts_with("invalid YAML:"), "{err}");
        let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
        let err = parse(&deep).expect_err("deep nesting is refused");
        assert!(err.starts_with("invalid YAML:"), "{err}");
        // Ordinary aliases still work.
        let docs = parse("x: &x {a: 1}\ny: *x\n").expect("parses");
        assert_eq!(docs[0]["y"]["a"], 1);
    }

    const GOOD: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: creds}
type: kubernetes.io/basic-auth
stringData: {username: alice, password: pw-123-secret}
---
apiVersion: switchboard.dev/v1alpha1
kind: SipTrunk
metadata: {name: carrier}
spec:
  inbound: {allowedSources: ["127.0.0.1/32"]}
  outbound:
    gateways: [{host: 127.0.0.1, port: 5080}]
    auth: {secretRef: {name: creds}}
---
apiVersion: switchboard.dev/v1alpha1
kind: PhoneNumber
metadata: {name: main, namespace: default}
spec:
  number: "+14155550100"
  trunkRef: {name: carrier}
  agent: {url: "ws://127.0.0.1:8765/agent"}
"#;

    #[test]
    fn loads_multi_document_files_with_defaults() {
        let mut l = Loaded::default();
        load_text("a.yaml", GOOD, &mut l);
        assert!(l.problems.is_empty(), "{:?}", l.problems);
        let r = crate::routing::resolve(&l.inputs);
        assert_eq!(r.config.numbers.len(), 1, "{r:?}");
        let t = &r.config.trunks[0];
        assert_eq!(t.id, "default/carrier");
        // Defaults from the Rust types match the CRD schema's defaults.
        assert_eq!(t.outbound.as_ref().expect("o").ringing_timeout_seconds, 60);
        assert_eq!(t.options_interval_seconds, 60);
    }

    #[test]
    fn a_broken_save_keeps_the_last_good_version_of_that_file() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("a.yaml"), GOOD).expect("write");
        let mut d = Directory::new(dir.path());
        assert_eq!(d.load().expect("load").inputs.numbers.len(), 1);
        std::fs::write(dir.path().join("a.yaml"), "apiVersion: [half written").expect("write");
        let l = d.load().expect("load");
        assert_eq!(
            l.inputs.numbers.len(),
            1,
            "the number stays while the file is broken"
        );
        assert!(
            l.problems[0]
                .message
                .contains("keeping its last good version"),
            "{:?}",
            l.problems
        );
        std::fs::remove_file(dir.path().join("a.yaml")).expect("rm");
        assert_eq!(
            d.load().expect("load").inputs.numbers.len(),
            0,
            "a deleted file is gone"
        );
    }

    #[test]
    fn thousands_of_documents_in_one_file_load() {
        let mut text =
            String::from("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {a: b}\n");
        for i in 0..3000 {
            text.push_str(&format!(
                "---\napiVersion: switchboard.dev/v1alpha1\nkind: PhoneNumber\nmetadata: {{name: n{i}}}\nspec: {{number: \"+1415{i:07}\", trunkRef: {{name: t}}}}\n"
            ));
        }
        let mut l = Loaded::default();
        load_text("big.yaml", &text, &mut l);
        assert!(l.problems.is_empty(), "{:?}", l.problems);
        assert_eq!(l.inputs.numbers.len(), 3000);
    }

    /// A file large enough to be parsed in pieces, with a bad document in
    /// each half.
    fn big_file(extra_middle: &str) -> String {
        let mut text = String::from("# numbers\n");
        for i in 0..12_000 {
            if i == 3 || i == 11_000 {
                text.push_str("---\nkind: ConfigMap\napiVersion: v1\nmetadata: {name: x}\n");
            }
            if i == 6_000 {
                text.push_str(extra_middle);
            }
            text.push_str(&format!(
                "---\napiVersion: switchboard.dev/v1alpha1\nkind: PhoneNumber\nmetadata: {{name: n{}}}\nspec:\n  number: \"+1415{i:07}\"\n  trunkRef: {{name: t}}\n  agent:\n    url: ws://a\n    parameters:\n      note: |\n        --- not a marker\n        more\n",
                i % 11_500
            ));
        }
        text
    }

    fn read_whole(text: &str) -> Result<Loaded, String> {
        let part = read_part(text)?;
        let l = Loaded {
            inputs: part.inputs,
            problems: part
                .problems
                .into_iter()
                .map(|(i, message)| Problem {
                    location: format!("big.yaml#{}", i + 1),
                    message,
                })
                .collect(),
        };
        Ok(l)
    }

    #[test]
    fn a_large_file_read_in_pieces_equals_reading_it_whole() {
        let text = big_file("");
        assert!(text.len() > PARALLEL_PARSE_BYTES);
        let pieces = split_documents(&text, 3);
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces.concat(), text);
        for p in &pieces[1..] {
            assert!(p.starts_with("---\n"), "{:?}", &p[..20]);
        }
        let mut l = Loaded::default();
        read_docs("big.yaml", &text, &mut l).expect("reads");
        let whole = read_whole(&text).expect("reads whole");
        assert_eq!(l.problems, whole.problems);
        assert_eq!(l.problems.len(), 2);
        assert_eq!(l.problems[1].location, "big.yaml#11002");
        // Names repeat after 11,500: the later document wins, as in order.
        assert_eq!(l.inputs.numbers.len(), 11_500);
        assert_eq!(l.inputs.numbers, whole.inputs.numbers);
    }

    #[test]
    fn a_large_file_with_an_error_or_a_directive_inside_reads_as_it_would_whole() {
        let broken = big_file("---\nkind: [unclosed\n");
        let mut l = Loaded::default();
        let err = read_docs("big.yaml", &broken, &mut l).expect_err("invalid");
        assert_eq!(Err(err), read_whole(&broken).map(|_| ()));
        // A directive belongs to the document after it: cut from it, the
        // piece fails and the text is read whole.
        let directive = big_file("%YAML 1.1\n");
        let mut l = Loaded::default();
        let got = read_docs("big.yaml", &directive, &mut l);
        let whole = read_whole(&directive);
        assert_eq!(got.is_ok(), whole.is_ok());
        if let Ok(w) = whole {
            assert_eq!(l.problems, w.problems);
            assert_eq!(l.inputs.numbers, w.inputs.numbers);
        }
    }

    #[test]
    fn document_markers_are_found_only_at_line_starts() {
        let text = "a: 1\n---\nb: |\n  --- x\n---x: 2\n--- \nc: 3\n";
        assert_eq!(next_marker(text, 0), Some(5));
        assert_eq!(next_marker(text, 6), Some(30));
        assert_eq!(next_marker(text, 31), None);
        assert_eq!(split_documents(text, 1), vec![text]);
        assert_eq!(split_documents("", 4), vec![""]);
    }

    #[test]
    fn bad_documents_are_reported_and_the_rest_loads() {
        let mut l = Loaded::default();
        let text = format!(
            "{GOOD}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: broken}}\ndata: {{password: 'not base64 !! hunter2'}}\n---\nkind: ConfigMap\napiVersion: v1\nmetadata: {{name: x}}\n"
        );
        load_text("b.yaml", &text, &mut l);
        assert_eq!(l.problems.len(), 2, "{:?}", l.problems);
        assert!(l.problems[0].message.contains("Secret broken"));
        assert!(!l.problems[0].message.contains("hunter2"));
        assert!(l.problems[1].message.contains("ConfigMap"));
        assert_eq!(l.inputs.numbers.len(), 1);

        let mut l = Loaded::default();
        load_text("c.yaml", "a: [unclosed\n", &mut l);
        assert_eq!(l.problems.len(), 1);
        assert!(l.problems[0].message.starts_with("invalid YAML"));
    }
}
