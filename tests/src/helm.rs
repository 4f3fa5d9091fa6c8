//! Runs the real `helm` binary on `charts/switchboard` and applies what it
//! renders to a test cluster.
//!
//! Helm: `$SWITCHBOARD_HELM`, else the cache `make test-deps` fills
//! (`~/.cache/switchboard/bin/helm`), else `PATH`.

use std::path::{Path, PathBuf};
use std::process::Command;

use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::{Discovery, Scope};
use serde_json::Value;

/// The Kubernetes version `helm template` renders for (the test API server's).
pub const KUBE_VERSION: &str = "v1.35.4";

/// Field manager for everything applied from a rendered chart.
const FIELD_MANAGER: &str = "switchboard-chart-test";

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `charts/switchboard`.
pub fn chart_dir() -> PathBuf {
    repo_root().join("charts/switchboard")
}

/// The example values files (`examples/helm/*.yaml`, not subdirectories),
/// sorted.
pub fn example_values() -> Vec<PathBuf> {
    let dir = repo_root().join("examples/helm");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
}

/// The helm binary; panics with the `make test-deps` hint when absent.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("SWITCHBOARD_HELM") {
        return PathBuf::from(p);
    }
    let cached = crate::envtest::tool("helm");
    if cached.is_absolute() {
        return cached;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("helm"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("helm not found (cache or PATH); run `make test-deps`"))
}

/// What a helm run printed.
#[derive(Debug)]
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs helm with the arguments, in the repository root, with its own
/// config/cache/data directories (no user repositories or plugins).
pub fn run(args: &[&str]) -> Output {
    let home = tempfile::tempdir().expect("helm home");
    let out = Command::new(binary())
        .args(args)
        .current_dir(repo_root())
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        // Never talk to a real cluster by accident.
        .env("KUBECONFIG", home.path().join("no-kubeconfig"))
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", binary().display()));
    Output {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A `helm template` invocation of the chart.
#[derive(Clone, Debug)]
pub struct Render {
    release: String,
    namespace: String,
    values: Vec<PathBuf>,
    sets: Vec<String>,
}

impl Render {
    /// Release `release` in `namespace`, default values.
    pub fn new(release: &str, namespace: &str) -> Self {
        Self {
            release: release.into(),
            namespace: namespace.into(),
            values: Vec::new(),
            sets: Vec::new(),
        }
    }

    /// Adds a values file (`-f`).
    pub fn values(mut self, file: impl AsRef<Path>) -> Self {
        self.values.push(file.as_ref().to_path_buf());
        self
    }

    /// Adds `--set key=value`.
    pub fn set(mut self, kv: &str) -> Self {
        self.sets.push(kv.into());
        self
    }

    fn args(&self, command: &str) -> Vec<String> {
        let chart = chart_dir().to_string_lossy().into_owned();
        let mut args = match command {
            "template" => vec![
                "template".to_string(),
                self.release.clone(),
                chart,
                "--namespace".into(),
                self.namespace.clone(),
                "--kube-version".into(),
                KUBE_VERSION.into(),
            ],
            _ => vec![
                "lint".to_string(),
                chart,
                "--strict".into(),
                "--namespace".into(),
                self.namespace.clone(),
                "--kube-version".into(),
                KUBE_VERSION.into(),
            ],
        };
        for v in &self.values {
            args.push("--values".into());
            args.push(v.to_string_lossy().into_owned());
        }
        for s in &self.sets {
            args.push("--set".into());
            args.push(s.clone());
        }
        args
    }

    /// `helm template`: the rendered YAML, or helm's stderr.
    pub fn template(&self) -> Result<String, String> {
        let args = self.args("template");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&args);
        if out.success {
            Ok(out.stdout)
        } else {
            Err(out.stderr)
        }
    }

    /// `helm lint --strict`: its output, or everything it printed.
    pub fn lint(&self) -> Result<String, String> {
        let args = self.args("lint");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&args);
        if out.success {
            Ok(out.stdout)
        } else {
            Err(format!("{}{}", out.stdout, out.stderr))
        }
    }

    /// The rendered documents; panics (with helm's message) on failure.
    pub fn documents(&self) -> Vec<Value> {
        let yaml = self
            .template()
            .unwrap_or_else(|e| panic!("helm template {:?} failed:\n{e}", self.args("template")));
        documents(&yaml)
    }
}

/// Parses a multi-document YAML stream, skipping empty documents.
pub fn documents(yaml: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml)
        .unwrap_or_else(|e| panic!("rendered YAML does not parse: {e}\n{yaml}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// `Kind/name` of a document, for messages.
pub fn describe(doc: &Value) -> String {
    format!(
        "{}/{}",
        doc["kind"].as_str().unwrap_or("?"),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// The documents of a kind.
pub fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// The one document of a kind with the name; panics otherwise.
pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .collect();
    match found.as_slice() {
        [one] => one,
        _ => panic!(
            "expected one {kind}/{name}, found {}; rendered: {:?}",
            found.len(),
            docs.iter().map(describe).collect::<Vec<_>>()
        ),
    }
}

/// Applies rendered documents with server-side apply through `client`
/// (`dry_run`: the API server validates, admits and discards them). Returns
/// one error line per refused document.
pub async fn apply(client: &Client, docs: &[Value], dry_run: bool) -> Vec<String> {
    let discovery = match Discovery::new(client.clone()).run().await {
        Ok(d) => d,
        Err(e) => return vec![format!("discovery: {e}")],
    };
    let mut params = PatchParams::apply(FIELD_MANAGER).force();
    params.dry_run = dry_run;
    let mut errors = Vec::new();
    for doc in docs {
        let what = describe(doc);
        let (group, version) = match doc["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .split_once('/')
        {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (
                String::new(),
                doc["apiVersion"].as_str().unwrap_or_default().to_string(),
            ),
        };
        let kind = doc["kind"].as_str().unwrap_or_default();
        let gvk = kube::api::GroupVersionKind::gvk(&group, &version, kind);
        let Some((resource, caps)) = discovery.resolve_gvk(&gvk) else {
            errors.push(format!("{what}: the API server does not serve {gvk:?}"));
            continue;
        };
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => {
                let ns = doc["metadata"]["namespace"].as_str().unwrap_or("default");
                Api::namespaced_with(client.clone(), ns, &resource)
            }
            Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
        if let Err(e) = api.patch(name, &params, &Patch::Apply(doc)).await {
            errors.push(format!("{what}: {e}"));
        }
    }
    errors
}
