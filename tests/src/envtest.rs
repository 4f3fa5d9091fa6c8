//! A real Kubernetes control plane for tests, in the spirit of controller-runtime's
//! envtest: one etcd and one kube-apiserver per [`TestCluster`], on free loopback
//! ports, in a fresh temporary directory, torn down on drop.
//!
//! There is no controller-manager, scheduler or kubelet: objects are stored and
//! validated, RBAC is enforced, but nothing reconciles built-in kinds (Pods stay
//! Pending, namespaces stay Terminating after deletion, no `default`
//! ServiceAccount is created — which is why the ServiceAccount admission plugin
//! is disabled, so Pods can be created without one).
//!
//! Binaries: `SWITCHBOARD_KUBE_APISERVER` / `SWITCHBOARD_ETCD`, else the cache
//! that `make test-deps` fills (`$SWITCHBOARD_CACHE`, default
//! `$HOME/.cache/switchboard`), else `PATH`. Set `SWITCHBOARD_ENVTEST_KEEP=1`
//! to keep a cluster's directory (logs, kubeconfig, etcd data) after the test.
//!
//! ```no_run
//! # async fn demo() -> Result<(), switchboard_tests::envtest::EnvtestError> {
//! use switchboard_tests::envtest::{ClusterOptions, TestCluster, User};
//! let operator = User::new("switchboard-operator");
//! let cluster = TestCluster::start_with(ClusterOptions::default().user(operator.clone())).await?;
//! cluster.install_crds("/work/main/crds").await?;
//! let admin = cluster.client().await?;
//! let as_operator = cluster.client_for(operator.token()).await?;
//! # let _ = (admin, as_operator); Ok(()) }
//! ```

use std::fmt::Write as _;
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use rand::RngCore as _;

/// Versions `scripts/test-deps.sh` builds; the cache paths below contain them.
const K8S_VERSION: &str = "v1.35.4";
const ETCD_VERSION: &str = "v3.6.5";
/// The user name the harness gives the admin token (group `system:masters`).
pub const ADMIN_USER: &str = "envtest-admin";
/// Field manager used for everything the harness applies.
const FIELD_MANAGER: &str = "switchboard-envtest";
/// Lines of a process's log quoted in errors.
const LOG_TAIL_LINES: usize = 40;
/// Attempts to start when a freshly picked port was taken by a parallel test in
/// the window between probing it and the process binding it.
const PORT_RACE_ATTEMPTS: usize = 3;

/// Everything that can go wrong starting or using a test cluster.
///
/// `Debug` prints the message and its causes (not the variant's fields), so a
/// test's `.expect(..)` shows the log tail and the `make test-deps` hint.
#[derive(thiserror::Error)]
pub enum EnvtestError {
    #[error(
        "{name} not found (looked at ${env}, {cache}, and PATH); run `make test-deps` to build it"
    )]
    BinaryNotFound {
        name: &'static str,
        env: &'static str,
        cache: PathBuf,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{name} exited during start-up ({status}); last lines of {log}:\n{tail}")]
    ProcessExited {
        name: &'static str,
        status: ExitStatus,
        log: PathBuf,
        tail: String,
    },
    #[error("kube-apiserver not ready after {waited:?} (last check: {last_error}); {logs}")]
    StartTimeout {
        waited: Duration,
        last_error: String,
        logs: Box<LogTails>,
    },
    #[error("invalid user {name:?}: {reason}")]
    InvalidUser { name: String, reason: &'static str },
    #[error("kubeconfig for {user}: {source}")]
    Kubeconfig {
        user: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("building a client for {user}: {source}")]
    Client {
        user: String,
        #[source]
        source: kube::Error,
    },
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("parsing YAML in {file}: {source}")]
    Yaml {
        file: PathBuf,
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    #[error("{file}: document {index} is not a CustomResourceDefinition: {source}")]
    NotACrd {
        file: PathBuf,
        index: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("{file}: document {index} has no metadata.name")]
    UnnamedCrd { file: PathBuf, index: usize },
    #[error("no YAML files in {0}")]
    NoCrds(PathBuf),
    #[error("CRD {name} not Established within {waited:?}")]
    CrdNotEstablished { name: String, waited: Duration },
    #[error("waiting for CRD {name}: {source}")]
    CrdWait {
        name: String,
        #[source]
        source: kube::runtime::wait::Error,
    },
    #[error("TokenRequest for {namespace}/{name} returned no token")]
    EmptyToken { namespace: String, name: String },
}

impl std::fmt::Debug for EnvtestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")?;
        let mut cause = std::error::Error::source(self);
        while let Some(err) = cause {
            write!(f, "\n  caused by: {err}")?;
            cause = err.source();
        }
        Ok(())
    }
}

/// The last lines of both logs, quoted when start-up times out.
#[derive(Debug)]
pub struct LogTails {
    pub apiserver_log: PathBuf,
    pub apiserver_tail: String,
    pub etcd_log: PathBuf,
    pub etcd_tail: String,
}

impl std::fmt::Display for LogTails {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "kube-apiserver log {}:\n{}\netcd log {}:\n{}",
            self.apiserver_log.display(),
            self.apiserver_tail,
            self.etcd_log.display(),
            self.etcd_tail
        )
    }
}

type Result<T, E = EnvtestError> = std::result::Result<T, E>;

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> EnvtestError {
    let what = what.into();
    move |source| EnvtestError::Io { what, source }
}

/// A user the API server authenticates by a static bearer token
/// (`--token-auth-file`). Authorization is RBAC only, so a user without groups
/// can do nothing until a Role/ClusterRole binding grants it.
///
/// To stand in for a ServiceAccount under RBAC that binds the account (e.g. the
/// Helm chart's), name the user `system:serviceaccount:<ns>:<name>` and add the
/// groups `system:serviceaccounts` and `system:serviceaccounts:<ns>` — or use
/// [`TestCluster::service_account_token`] for a real, signed token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    name: String,
    token: String,
    groups: Vec<String>,
}

impl User {
    /// A user with a fresh random token and no groups.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            token: random_hex(24),
            groups: Vec::new(),
        }
    }

    /// Adds a group (e.g. `system:masters` for a second admin).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.groups.push(group.into());
        self
    }

    /// Replaces the random token with a chosen one.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = token.into();
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn groups(&self) -> &[String] {
        &self.groups
    }

    /// One line of the static token file: `token,user,uid,"group1,group2"`.
    fn token_file_line(&self, uid: usize) -> Result<String> {
        // The file is CSV without escaping: separators or quotes would silently
        // shift fields, so refuse them.
        let bad = |s: &str| s.is_empty() || s.contains([',', '"', '\n', '\r']);
        if bad(&self.name) {
            return Err(EnvtestError::InvalidUser {
                name: self.name.clone(),
                reason: "names must be non-empty without commas, quotes or newlines",
            });
        }
        if bad(&self.token) || self.token.contains(char::is_whitespace) {
            return Err(EnvtestError::InvalidUser {
                name: self.name.clone(),
                reason: "tokens must be non-empty without commas, quotes or whitespace",
            });
        }
        if self.groups.iter().any(|g| bad(g)) {
            return Err(EnvtestError::InvalidUser {
                name: self.name.clone(),
                reason: "groups must be non-empty without commas, quotes or newlines",
            });
        }
        Ok(format!(
            "{},{},uid-{uid},\"{}\"\n",
            self.token,
            self.name,
            self.groups.join(",")
        ))
    }
}

/// How to start a [`TestCluster`].
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    users: Vec<User>,
    apiserver_args: Vec<String>,
    startup_timeout: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            users: Vec::new(),
            apiserver_args: Vec::new(),
            // Start-up takes ~2–3 s alone; parallel tests on two cores share the
            // CPU, so leave generous room before calling it a failure.
            startup_timeout: Duration::from_secs(90),
        }
    }
}

impl ClusterOptions {
    /// Adds a static-token user besides the admin.
    pub fn user(mut self, user: User) -> Self {
        self.users.push(user);
        self
    }

    /// Appends a kube-apiserver flag (`--name=value`); later flags win.
    pub fn apiserver_arg(mut self, arg: impl Into<String>) -> Self {
        self.apiserver_args.push(arg.into());
        self
    }

    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }
}

/// A running etcd + kube-apiserver. Dropping it kills both and deletes its
/// directory.
pub struct TestCluster {
    // Processes are stopped in Drop before `dir` is removed (field order).
    apiserver: Process,
    etcd: Process,
    server_url: String,
    admin: User,
    users: Vec<User>,
    ca_file: PathBuf,
    kubeconfig: PathBuf,
    startup: Duration,
    dir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster")
            .field("server_url", &self.server_url)
            .field("dir", &self.dir())
            .finish_non_exhaustive()
    }
}

impl TestCluster {
    /// Starts a cluster with only the admin user.
    pub async fn start() -> Result<Self> {
        Self::start_with(ClusterOptions::default()).await
    }

    pub async fn start_with(options: ClusterOptions) -> Result<Self> {
        let apiserver_bin = find_binary(
            "kube-apiserver",
            "SWITCHBOARD_KUBE_APISERVER",
            &cache_root()
                .join(format!("k8s-{K8S_VERSION}"))
                .join("kube-apiserver"),
        )?;
        let etcd_bin = find_binary(
            "etcd",
            "SWITCHBOARD_ETCD",
            &cache_root()
                .join(format!("etcd-{ETCD_VERSION}"))
                .join("etcd"),
        )?;
        let mut attempt = 1;
        loop {
            match Self::start_once(&options, &apiserver_bin, &etcd_bin).await {
                Err(EnvtestError::ProcessExited { ref tail, .. })
                    if attempt < PORT_RACE_ATTEMPTS && tail.contains("address already in use") =>
                {
                    tracing::warn!(attempt, "envtest port taken by a parallel start; retrying");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn start_once(
        options: &ClusterOptions,
        apiserver_bin: &Path,
        etcd_bin: &Path,
    ) -> Result<Self> {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("switchboard-envtest-")
            .tempdir()
            .map_err(io_err("creating the cluster directory"))?;
        let root = dir.path().to_path_buf();

        let admin = User::new(ADMIN_USER).group("system:masters");
        let mut tokens = String::new();
        for (uid, user) in std::iter::once(&admin).chain(&options.users).enumerate() {
            tokens.push_str(&user.token_file_line(uid)?);
        }
        let tokens_file = root.join("tokens.csv");
        write_file(&tokens_file, tokens.as_bytes())?;

        // Service-account token signing needs a key pair; an EC private key
        // serves as both the signing key and the verification key file.
        let sa_key = root.join("service-account.key");
        write_file(&sa_key, ec_p256_private_key_pem().as_bytes())?;

        let [etcd_client, etcd_peer, secure_port] = free_ports()?;
        let etcd_client_url = format!("http://127.0.0.1:{etcd_client}");
        let etcd_peer_url = format!("http://127.0.0.1:{etcd_peer}");

        // etcd and kube-apiserver start together: the API server retries its
        // storage connection, so waiting for etcd first would only add latency.
        let etcd = Process::spawn(
            "etcd",
            etcd_bin,
            &[
                format!("--data-dir={}", root.join("etcd").display()),
                format!("--listen-client-urls={etcd_client_url}"),
                format!("--advertise-client-urls={etcd_client_url}"),
                format!("--listen-peer-urls={etcd_peer_url}"),
                format!("--initial-advertise-peer-urls={etcd_peer_url}"),
                format!("--initial-cluster=default={etcd_peer_url}"),
                // Throwaway data: durability only costs start-up and write latency.
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
            &root.join("etcd.log"),
        )?;

        let cert_dir = root.join("certs");
        let mut args = vec![
            format!("--etcd-servers={etcd_client_url}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={secure_port}"),
            // kube-apiserver writes a self-signed CA and a serving certificate
            // (SANs include 127.0.0.1) here; the CA is read back for clients.
            format!("--cert-dir={}", cert_dir.display()),
            // Without this it advertises the host's first interface address,
            // which fails on machines with only loopback.
            "--advertise-address=127.0.0.1".into(),
            // No endpoints for the `kubernetes` Service: nothing in-cluster
            // reaches it, and loopback endpoints are invalid anyway.
            "--endpoint-reconciler-type=none".into(),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            format!("--service-account-key-file={}", sa_key.display()),
            format!("--service-account-signing-key-file={}", sa_key.display()),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--token-auth-file={}", tokens_file.display()),
            "--authorization-mode=RBAC".into(),
            // No controller-manager creates `default` ServiceAccounts, which
            // this plugin would require for every Pod.
            "--disable-admission-plugins=ServiceAccount".into(),
            // Skips bootstrapping the flow-control configuration objects.
            "--enable-priority-and-fairness=false".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
        ];
        args.extend(options.apiserver_args.iter().cloned());
        let apiserver = Process::spawn(
            "kube-apiserver",
            apiserver_bin,
            &args,
            &root.join("kube-apiserver.log"),
        )?;

        let mut cluster = TestCluster {
            apiserver,
            etcd,
            server_url: format!("https://127.0.0.1:{secure_port}"),
            admin,
            users: options.users.clone(),
            ca_file: root.join("ca.crt"),
            kubeconfig: root.join("kubeconfig"),
            startup: Duration::ZERO,
            dir: Some(dir),
        };
        cluster
            .wait_ready(&cert_dir, options.startup_timeout)
            .await
            .inspect_err(|_| cluster.keep_logs_after_failure())?;
        cluster.startup = started.elapsed();
        tracing::info!(
            url = %cluster.server_url,
            startup_ms = cluster.startup.as_millis() as u64,
            dir = %root.display(),
            "envtest cluster ready"
        );
        Ok(cluster)
    }

    /// Polls `/readyz` until it answers 200, a process dies, or the deadline.
    async fn wait_ready(&mut self, cert_dir: &Path, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        let mut client: Option<kube::Client> = None;
        let mut last_error = String::from("serving certificate not written yet");
        loop {
            self.etcd.check_running()?;
            self.apiserver.check_running()?;

            if client.is_none()
                && let Some(ca) = read_serving_ca(&cert_dir.join("apiserver.crt"))?
            {
                write_file(&self.ca_file, ca.as_bytes())?;
                let admin = self.admin.clone();
                write_file(&self.kubeconfig, self.kubeconfig_yaml(&admin).as_bytes())?;
                client = Some(self.client().await?);
            }
            if let Some(client) = &client {
                let request = kube::core::Request::new("")
                    .get("readyz", &Default::default())
                    .map_err(|e| EnvtestError::Api {
                        what: "building the /readyz request".into(),
                        source: kube::Error::BuildRequest(e),
                    })?;
                match tokio::time::timeout(Duration::from_secs(5), client.request_text(request))
                    .await
                {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(e)) => last_error = e.to_string(),
                    Err(_) => last_error = "GET /readyz timed out".into(),
                }
            }
            if started.elapsed() > timeout {
                return Err(EnvtestError::StartTimeout {
                    waited: started.elapsed(),
                    last_error,
                    logs: Box::new(LogTails {
                        apiserver_log: self.apiserver.log.clone(),
                        apiserver_tail: log_tail(&self.apiserver.log),
                        etcd_log: self.etcd.log.clone(),
                        etcd_tail: log_tail(&self.etcd.log),
                    }),
                });
            }
            // The poll interval; readiness has no event to await from outside.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// After a failed start: stops the processes and keeps the directory so
    /// the log paths quoted in the error stay valid, minus the etcd data
    /// (its preallocated WAL alone is 64 MB).
    fn keep_logs_after_failure(&mut self) {
        self.apiserver.stop();
        self.etcd.stop();
        if let Some(dir) = self.dir.take() {
            let kept = dir.keep();
            let _ = std::fs::remove_dir_all(kept.join("etcd"));
        }
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The admin kubeconfig (kube-rs, kubectl and helm accept it).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// PEM of the CA that signed the serving certificate.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The cluster's directory: logs (`etcd.log`, `kube-apiserver.log`),
    /// kubeconfigs, certificates, etcd data.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new(""), |d| d.path())
    }

    pub fn apiserver_log(&self) -> &Path {
        &self.apiserver.log
    }

    pub fn etcd_log(&self) -> &Path {
        &self.etcd.log
    }

    /// How long [`TestCluster::start`] took until `/readyz` answered.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// The admin user (group `system:masters`).
    pub fn admin(&self) -> &User {
        &self.admin
    }

    /// The extra users given in [`ClusterOptions::user`].
    pub fn users(&self) -> &[User] {
        &self.users
    }

    /// The user registered under `name`, admin included.
    pub fn user(&self, name: &str) -> Option<&User> {
        std::iter::once(&self.admin)
            .chain(&self.users)
            .find(|u| u.name == name)
    }

    /// A client authenticated as the admin, built from the kubeconfig file.
    pub async fn client(&self) -> Result<kube::Client> {
        let kubeconfig =
            Kubeconfig::read_from(&self.kubeconfig).map_err(|source| EnvtestError::Kubeconfig {
                user: ADMIN_USER.into(),
                source,
            })?;
        self.client_from(kubeconfig, ADMIN_USER).await
    }

    /// A client that sends `token` (a static user's or a ServiceAccount's).
    pub async fn client_for(&self, token: &str) -> Result<kube::Client> {
        let user = User::new("token-user").with_token(token);
        let kubeconfig = Kubeconfig::from_yaml(&self.kubeconfig_yaml(&user)).map_err(|source| {
            EnvtestError::Kubeconfig {
                user: user.name.clone(),
                source,
            }
        })?;
        self.client_from(kubeconfig, &user.name).await
    }

    /// An admin client that connects to `server` (e.g. a proxy in front of
    /// the API server) instead of the API server itself. The serving
    /// certificate must still verify: keep the host `127.0.0.1`.
    pub async fn client_via(&self, server: &str) -> Result<kube::Client> {
        let yaml = self.kubeconfig_yaml_at(&self.admin, server);
        let kubeconfig =
            Kubeconfig::from_yaml(&yaml).map_err(|source| EnvtestError::Kubeconfig {
                user: ADMIN_USER.into(),
                source,
            })?;
        self.client_from(kubeconfig, ADMIN_USER).await
    }

    async fn client_from(&self, kubeconfig: Kubeconfig, user: &str) -> Result<kube::Client> {
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|source| EnvtestError::Kubeconfig {
                    user: user.into(),
                    source,
                })?;
        kube::Client::try_from(config).map_err(|source| EnvtestError::Client {
            user: user.into(),
            source,
        })
    }

    /// Writes a kubeconfig for `user` into the cluster directory and returns
    /// its path — for running a binary (the operator, kubectl, helm) as them.
    pub fn write_kubeconfig_for(&self, user: &User) -> Result<PathBuf> {
        self.write_kubeconfig_via(user, &self.server_url)
    }

    /// Like [`TestCluster::write_kubeconfig_for`], with `server` (e.g. a
    /// proxy on `127.0.0.1`) in place of the API server's address.
    pub fn write_kubeconfig_via(&self, user: &User, server: &str) -> Result<PathBuf> {
        let file_safe: String = user
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let suffix = if server == self.server_url {
            String::new()
        } else {
            format!("-{}", server.rsplit(':').next().unwrap_or_default())
        };
        let path = self.dir().join(format!("kubeconfig-{file_safe}{suffix}"));
        write_file(&path, self.kubeconfig_yaml_at(user, server).as_bytes())?;
        Ok(path)
    }

    fn kubeconfig_yaml(&self, user: &User) -> String {
        self.kubeconfig_yaml_at(user, &self.server_url)
    }

    fn kubeconfig_yaml_at(&self, user: &User, server: &str) -> String {
        // Tokens and names are validated to be CSV/YAML-plain; the CA is a file
        // path so no base64 is needed. Strings are JSON-quoted (valid YAML).
        let q = |s: &str| serde_json::Value::from(s).to_string();
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: envtest\n  cluster:\n    \
             server: {server}\n    certificate-authority: {ca}\nusers:\n- name: {name}\n  \
             user:\n    token: {token}\ncontexts:\n- name: envtest\n  context:\n    \
             cluster: envtest\n    user: {name}\n    namespace: default\n\
             current-context: envtest\n",
            server = q(server),
            ca = q(&self.ca_file.to_string_lossy()),
            name = q(&user.name),
            token = q(&user.token),
        )
    }

    /// Creates ServiceAccount `namespace/name` if missing (the namespace must
    /// exist) and returns a signed token for it from the TokenRequest API, as a
    /// Pod running under that account would get.
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> Result<String> {
        let client = self.client().await?;
        let accounts: Api<ServiceAccount> = Api::namespaced(client, namespace);
        let account = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let what = format!("ServiceAccount {namespace}/{name}");
        match accounts.create(&PostParams::default(), &account).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(source) => return Err(EnvtestError::Api { what, source }),
        }
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: Vec::new(),
                expiration_seconds: Some(3600),
                ..Default::default()
            },
            ..Default::default()
        };
        let token = accounts
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .map_err(|source| EnvtestError::Api {
                what: format!("TokenRequest for {what}"),
                source,
            })?;
        token
            .status
            .map(|s| s.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| EnvtestError::EmptyToken {
                namespace: namespace.into(),
                name: name.into(),
            })
    }

    /// Applies every `*.yaml`/`*.yml` file in `dir` (sorted, not recursive;
    /// every document must be a CustomResourceDefinition) and waits until each
    /// CRD is Established. Returns the CRD names.
    pub async fn install_crds(&self, dir: impl AsRef<Path>) -> Result<Vec<String>> {
        let dir = dir.as_ref();
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err(format!("reading {}", dir.display())))? {
            let path = entry
                .map_err(io_err(format!("reading {}", dir.display())))?
                .path();
            let is_yaml = matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            );
            if is_yaml && path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(EnvtestError::NoCrds(dir.to_path_buf()));
        }
        let mut crds = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file)
                .map_err(io_err(format!("reading {}", file.display())))?;
            crds.extend(parse_crds(file, &text)?);
        }
        self.apply_crds(crds).await
    }

    /// Applies the CRDs in a YAML string (one or more documents) and waits
    /// until each is Established. Returns the CRD names.
    pub async fn install_crd_yaml(&self, yaml: &str) -> Result<Vec<String>> {
        let crds = parse_crds(Path::new("<inline>"), yaml)?;
        self.apply_crds(crds).await
    }

    async fn apply_crds(&self, crds: Vec<CustomResourceDefinition>) -> Result<Vec<String>> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client().await?);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let mut names = Vec::new();
        for crd in crds {
            // parse_crds guarantees a name.
            let name = crd.metadata.name.clone().unwrap_or_default();
            api.patch(&name, &params, &Patch::Apply(&crd))
                .await
                .map_err(|source| EnvtestError::Api {
                    what: format!("applying CRD {name}"),
                    source,
                })?;
            names.push(name);
        }
        // The apiserver establishes CRDs asynchronously (name conflicts are
        // checked first); a watch sees the condition as soon as it is set.
        let timeout = Duration::from_secs(30);
        for name in &names {
            let wait = await_condition(api.clone(), name, conditions::is_crd_established());
            match tokio::time::timeout(timeout, wait).await {
                Ok(Ok(_)) => {}
                Ok(Err(source)) => {
                    return Err(EnvtestError::CrdWait {
                        name: name.clone(),
                        source,
                    });
                }
                Err(_) => {
                    return Err(EnvtestError::CrdNotEstablished {
                        name: name.clone(),
                        waited: timeout,
                    });
                }
            }
        }
        Ok(names)
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // API server first so it does not log storage errors while etcd goes.
        self.apiserver.stop();
        self.etcd.stop();
        if std::env::var_os("SWITCHBOARD_ENVTEST_KEEP").is_some()
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            eprintln!("envtest: kept cluster directory {}", kept.display());
        }
    }
}

fn parse_crds(file: &Path, text: &str) -> Result<Vec<CustomResourceDefinition>> {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(text).map_err(|source| EnvtestError::Yaml {
            file: file.to_path_buf(),
            source: Box::new(source),
        })?;
    let mut crds = Vec::new();
    // Empty documents (a leading `---`, a trailing separator) parse as null.
    for (index, doc) in docs.into_iter().enumerate().filter(|(_, d)| !d.is_null()) {
        let kind_ok = doc.get("kind").and_then(|k| k.as_str()) == Some("CustomResourceDefinition");
        let crd: CustomResourceDefinition = if kind_ok {
            serde_json::from_value(doc)
        } else {
            Err(serde::de::Error::custom(format!(
                "kind is {}",
                doc.get("kind").unwrap_or(&serde_json::Value::Null)
            )))
        }
        .map_err(|source| EnvtestError::NotACrd {
            file: file.to_path_buf(),
            index,
            source,
        })?;
        if crd.metadata.name.as_deref().is_none_or(str::is_empty) {
            return Err(EnvtestError::UnnamedCrd {
                file: file.to_path_buf(),
                index,
            });
        }
        crds.push(crd);
    }
    Ok(crds)
}

/// A child process wrapped so that it dies with the test process.
///
/// The binary runs under `sh` in its own process group; the shell holds the
/// read end of a pipe whose write end only this process holds. When the pipe
/// closes — `stop()`, or the test process dying in any way, even SIGKILL — a
/// watcher SIGKILLs the binary and the shell reaps it before exiting, so once
/// the shell is reaped the binary's sockets are closed and its ports free.
/// Without this, an aborted `cargo test` would leave API servers running on a
/// two-core machine. (etcd and kube-apiserver start no children of their own.)
struct Process {
    name: &'static str,
    child: Option<Child>,
    lifeline: Option<ChildStdin>,
    log: PathBuf,
}

/// `$@` is the binary and its arguments. Exits with the binary's status so
/// `try_wait` on the shell reports the binary's exit.
const WRAPPER: &str = r#"exec 3<&0
"$@" </dev/null &
child=$!
( read -r _ <&3; kill -KILL "$child" ) &
watcher=$!
wait "$child"
status=$?
kill "$watcher" 2>/dev/null
wait "$watcher" 2>/dev/null
exit "$status"
"#;

impl Process {
    fn spawn(name: &'static str, bin: &Path, args: &[String], log: &Path) -> Result<Self> {
        use std::os::unix::process::CommandExt as _;
        let out =
            std::fs::File::create(log).map_err(io_err(format!("creating {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(io_err(format!("opening {}", log.display())))?;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WRAPPER)
            .arg(name)
            .arg(bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(io_err(format!("starting {name} ({})", bin.display())))?;
        let lifeline = child.stdin.take();
        Ok(Self {
            name,
            child: Some(child),
            lifeline,
            log: log.to_path_buf(),
        })
    }

    fn check_running(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(EnvtestError::ProcessExited {
                name: self.name,
                status,
                log: self.log.clone(),
                tail: log_tail(&self.log),
            }),
            Err(e) => Err(io_err(format!("checking on {}", self.name))(e)),
        }
    }

    fn stop(&mut self) {
        // Closing the pipe makes the watcher SIGKILL the binary.
        drop(self.lifeline.take());
        let Some(mut child) = self.child.take() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                // The watcher did not act (or try_wait failed): kill the shell
                // directly and reap it; nothing more can be done in Drop.
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last lines of a log file, for error messages.
fn log_tail(path: &Path) -> String {
    let read = || -> io::Result<String> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        // Long enough for LOG_TAIL_LINES of kube-apiserver's wide lines.
        let start = len.saturating_sub(64 * 1024);
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(e) => format!("(could not read {}: {e})", path.display()),
    }
}

/// The CA certificate from the `--cert-dir` bundle (serving certificate, then
/// the CA that signed it), or None while the file is absent or half-written.
fn read_serving_ca(bundle: &Path) -> Result<Option<String>> {
    const END: &str = "-----END CERTIFICATE-----";
    let text = match std::fs::read_to_string(bundle) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(format!("reading {}", bundle.display()))(e)),
    };
    if text.matches(END).count() < 2 {
        return Ok(None);
    }
    let Some(begin) = text.rfind("-----BEGIN CERTIFICATE-----") else {
        return Ok(None);
    };
    let ca = text[begin..].trim_end();
    Ok(ca.ends_with(END).then(|| format!("{ca}\n")))
}

fn write_file(path: &Path, contents: &[u8]) -> Result<()> {
    std::fs::write(path, contents).map_err(io_err(format!("writing {}", path.display())))
}

fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("SWITCHBOARD_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache").join("switchboard")
}

/// Where to run a client tool `make test-deps` installs (`kubectl`, `helm`):
/// `$SWITCHBOARD_CACHE/bin/<name>` when present, else the bare name for a
/// PATH lookup (which may find an older kubectl).
pub fn tool(name: &str) -> PathBuf {
    let cached = cache_root().join("bin").join(name);
    if cached.is_file() {
        cached
    } else {
        PathBuf::from(name)
    }
}

fn find_binary(name: &'static str, env: &'static str, cache: &Path) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Ok(PathBuf::from(path));
    }
    if cache.is_file() {
        return Ok(cache.to_path_buf());
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| EnvtestError::BinaryNotFound {
            name,
            env,
            cache: cache.to_path_buf(),
        })
}

/// Three distinct free loopback ports, never handed out before in this
/// process (see [`crate::ports`]). A process outside it may still take one
/// before etcd or the API server binds it; `start_with` retries then.
fn free_ports() -> Result<[u16; 3]> {
    use crate::ports::free_port;
    Ok([free_port(), free_port(), free_port()])
}

fn random_hex(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut raw);
    raw.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A fresh P-256 private key as SEC1 PEM ("EC PRIVATE KEY"), which
/// kube-apiserver accepts both to sign ServiceAccount tokens (ES256) and to
/// verify them. Built by hand because the test crate has no crypto or PEM
/// dependency: the DER is fixed apart from the 32-byte scalar, and Go derives
/// the public key itself (the optional publicKey field is left out).
fn ec_p256_private_key_pem() -> String {
    let mut scalar = [0u8; 32];
    rand::rng().fill_bytes(&mut scalar);
    // Clearing the top bit keeps the scalar below the group order n (whose top
    // byte is 0xff); 255 random bits are plenty for a test key.
    scalar[0] &= 0x7f;
    scalar[31] |= 1; // never zero
    let mut der = vec![0x30, 0x31, 0x02, 0x01, 0x01, 0x04, 0x20];
    der.extend_from_slice(&scalar);
    // [0] { OID 1.2.840.10045.3.1.7 (prime256v1) }
    der.extend_from_slice(&[
        0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    ]);
    // ByteString serializes as a base64 JSON string: the only base64 encoder
    // among this crate's dependencies.
    let encoded = serde_json::to_value(ByteString(der))
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut pem = String::from("-----BEGIN EC PRIVATE KEY-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END EC PRIVATE KEY-----\n");
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_key_pem_has_sec1_structure() {
        let pem = ec_p256_private_key_pem();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der: ByteString =
            serde_json::from_value(serde_json::Value::String(body)).expect("PEM body is base64");
        assert_eq!(der.0.len(), 51);
        assert_eq!(&der.0[..7], &[0x30, 0x31, 0x02, 0x01, 0x01, 0x04, 0x20]);
        assert!(der.0[7] < 0x80, "scalar must stay below the group order");
    }

    #[test]
    fn token_file_refuses_separators() {
        let user = User::new("a,b");
        assert!(matches!(
            user.token_file_line(0),
            Err(EnvtestError::InvalidUser { .. })
        ));
        let line = User::new("alice")
            .with_token("t0k")
            .group("g1")
            .group("g2")
            .token_file_line(3)
            .expect("valid user");
        assert_eq!(line, "t0k,alice,uid-3,\"g1,g2\"\n");
    }

    #[test]
    fn serving_ca_is_the_last_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("apiserver.crt");
        assert_eq!(read_serving_ca(&path).expect("absent is fine"), None);
        let leaf = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let ca = "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n";
        std::fs::write(&path, leaf).expect("write");
        assert_eq!(read_serving_ca(&path).expect("half-written"), None);
        std::fs::write(&path, format!("{leaf}{ca}")).expect("write");
        assert_eq!(
            read_serving_ca(&path).expect("complete").as_deref(),
            Some(ca)
        );
    }

    #[test]
    fn crd_parsing_skips_empty_documents_and_refuses_other_kinds() {
        let crd = "---\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n\
                   metadata:\n  name: widgets.example.com\nspec:\n  group: example.com\n  \
                   names: {kind: Widget, plural: widgets}\n  scope: Namespaced\n  versions: []\n---\n";
        let parsed = parse_crds(Path::new("x.yaml"), crd).expect("one CRD");
        assert_eq!(parsed.len(), 1);
        let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n";
        assert!(matches!(
            parse_crds(Path::new("x.yaml"), cm),
            Err(EnvtestError::NotACrd { index: 0, .. })
        ));
    }
}
