//! One campaign's I/O shell, run by the leading operator: loads the callees
//! and the recorded results, checks what the nodes already have, then paces
//! dials onto the fleet and folds the outcomes back into the progress, the
//! results ConfigMaps, the status and the webhook.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use switchboard_proto::v1alpha1 as pb;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info, warn};

use super::callees::{self, Entry};
use super::nodes::{self, NodeCallError, NodeCalls, NodeEvent};
use super::progress::{Final, Index, Outcome, Progress, Take};
use super::schedule::{self, Plan, WindowState};
use super::webhook::{Outcome as HookOutcome, Webhook};
use super::{CampaignMetrics, phase, results};
use crate::crd::{CallCampaign, CallCampaignStatus};
use crate::fleet::view::FleetView;
use crate::reconcile::conditions::condition;
use crate::routing::Verdict;
use crate::routing::index::Snapshot;

/// What the runner needs from the operator.
pub struct Shared {
    /// The API server.
    pub kube: kube::Client,
    /// The nodes' call service.
    pub nodes: Arc<NodeCalls>,
    /// The resolved resources (numbers, trunks and their limits).
    pub snapshot: watch::Receiver<Snapshot>,
    /// The fleet as the nodes report it.
    pub view: watch::Receiver<Arc<FleetView>>,
    /// Campaign metrics.
    pub metrics: Arc<CampaignMetrics>,
    /// Outcome webhooks.
    pub webhook: Webhook,
}

/// Field manager of the results ConfigMaps and the status.
const MANAGER: &str = "switchboard-operator-campaigns";
/// Label naming a results ConfigMap's campaign uid.
pub const UID_LABEL: &str = "switchboard.dev/campaign-uid";
/// Label naming a results ConfigMap's campaign.
pub const NAME_LABEL: &str = "switchboard.dev/campaign";
/// Status and outcome records are written at most this often.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How often the nodes are asked what they have of the campaign.
const RECONCILE_EVERY: Duration = Duration::from_secs(10);
/// A node unreachable this long loses the campaign calls it had.
const NODE_LOST_AFTER: Duration = Duration::from_secs(30);
/// A node that refused a dial gets no new one for this long.
const COOLDOWN: Duration = Duration::from_secs(1);
/// Dials in flight at once (RPCs; each answers once the call is queued).
const MAX_DIALS_IN_FLIGHT: usize = 64;
/// Attempts are recorded ahead of their dial for this long at the
/// campaign's pace (one results write per batch, not per dial).
const RECORD_AHEAD: Duration = Duration::from_secs(1);

fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

/// Why the campaign cannot run (the Ready condition's reason and message).
#[derive(Debug, Clone, PartialEq)]
struct Problem {
    reason: &'static str,
    message: String,
    /// Fatal: the campaign fails instead of waiting for a fix.
    fatal: bool,
}

impl Problem {
    fn new(reason: &'static str, message: impl Into<String>) -> Problem {
        Problem {
            reason,
            message: message.into(),
            fatal: false,
        }
    }
}

/// A caller ID of the campaign and its trunk.
#[derive(Debug, Clone, PartialEq)]
struct Caller {
    e164: String,
    trunk_id: String,
}

/// The limits in force: the campaign's, bounded by its trunks'.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Limits {
    max_concurrent: u64,
    cps: f64,
}

/// Resolves the campaign's caller IDs and limits against the routing
/// configuration.
fn resolve_from(c: &CallCampaign, snap: &Snapshot) -> Result<(Vec<Caller>, Limits), Problem> {
    let ns = c.namespace().unwrap_or_default();
    let spec = &c.spec;
    let mut callers = Vec::new();
    let mut max = u64::from(spec.pacing.max_concurrent_calls);
    let mut cps = spec.pacing.calls_per_second;
    let mut seen_trunks = HashSet::new();
    for name in &spec.from {
        let id = format!("{ns}/{name}");
        let Some(n) = snap.number_configs.get(&id) else {
            let why = snap
                .numbers
                .iter()
                .find(|(k, _)| *k.namespace == *ns && *k.name == **name)
                .map(|(_, v)| {
                    let w = if v.accepted.ok {
                        &v.resolved_refs
                    } else {
                        &v.accepted
                    };
                    format!("PhoneNumber {name} is not usable: {}", w.message)
                })
                .unwrap_or_else(|| format!("PhoneNumber {name} not found in namespace {ns}"));
            return Err(Problem::new("UnknownNumber", why));
        };
        if !n.outbound {
            return Err(Problem::new(
                "NumberNotOutbound",
                format!("PhoneNumber {name} does not allow outbound calls (spec.outbound: false)"),
            ));
        }
        let Some(t) = snap.trunk_configs.get(&n.trunk_id) else {
            return Err(Problem::new(
                "TrunkNotUsable",
                format!(
                    "the trunk {} of PhoneNumber {name} is not usable",
                    n.trunk_id
                ),
            ));
        };
        if seen_trunks.insert(t.id.clone())
            && let Some(l) = &t.limits
        {
            let reserve = spec.pacing.reserve_inbound;
            if l.max_concurrent_calls > 0 {
                let room = l.max_concurrent_calls.saturating_sub(reserve);
                if spec.pacing.max_concurrent_calls > room {
                    return Err(Problem::new(
                        "PacingAboveTrunkLimit",
                        format!(
                            "pacing.maxConcurrentCalls {} is above what trunk {} allows: \
                             maxConcurrentCalls {} minus reserveInbound {reserve}",
                            spec.pacing.max_concurrent_calls, t.id, l.max_concurrent_calls
                        ),
                    ));
                }
                max = max.min(u64::from(room));
            }
            if l.max_calls_per_second > 0 {
                let trunk_cps = f64::from(l.max_calls_per_second);
                if spec.pacing.calls_per_second > trunk_cps {
                    return Err(Problem::new(
                        "PacingAboveTrunkLimit",
                        format!(
                            "pacing.callsPerSecond {} is above trunk {}'s maxCallsPerSecond {}",
                            spec.pacing.calls_per_second, t.id, l.max_calls_per_second
                        ),
                    ));
                }
                cps = cps.min(trunk_cps);
            }
        }
        callers.push(Caller {
            e164: n.e164.clone(),
            trunk_id: n.trunk_id.clone(),
        });
    }
    Ok((
        callers,
        Limits {
            max_concurrent: max,
            cps,
        },
    ))
}

/// Reads the callee list: inline entries, then each ConfigMap's keys.
async fn load_callees(kube: &kube::Client, c: &CallCampaign) -> Result<Vec<Entry>, Problem> {
    let ns = c.namespace().unwrap_or_default();
    let mut out: Vec<Entry> = c.spec.callees.inline.iter().map(Entry::from).collect();
    let api: Api<ConfigMap> = Api::namespaced(kube.clone(), &ns);
    for src in &c.spec.callees.config_maps {
        let cm = match api.get_opt(&src.name).await {
            Ok(Some(cm)) => cm,
            Ok(None) => {
                return Err(Problem::new(
                    "CalleesNotFound",
                    format!(
                        "ConfigMap {} (callees) not found in namespace {ns}",
                        src.name
                    ),
                ));
            }
            Err(e) => {
                return Err(Problem::new(
                    "CalleesUnreadable",
                    format!("reading ConfigMap {}: {e}", src.name),
                ));
            }
        };
        for (key, text) in cm.data.iter().flatten() {
            let format = callees::format_for(key, src.format);
            callees::parse(text, format, &mut out).map_err(|e| Problem {
                reason: "InvalidCallees",
                message: format!("ConfigMap {} key {key}: {e}", src.name),
                fatal: false,
            })?;
        }
    }
    if out.is_empty() {
        return Err(Problem::new("NoCallees", "the callee list is empty"));
    }
    Ok(out)
}

/// The callees' own time zones, checked.
fn zones(entries: &[Entry]) -> Result<HashMap<String, jiff::tz::TimeZone>, Problem> {
    let mut out = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if let Some(z) = &e.time_zone
            && !out.contains_key(z)
        {
            let tz = schedule::zone(z).map_err(|err| {
                Problem::new("InvalidTimeZone", format!("callee {i} ({}): {err}", e.to))
            })?;
            out.insert(z.clone(), tz);
        }
    }
    Ok(out)
}

/// One campaign's running state.
struct Runner {
    shared: Arc<Shared>,
    obj: Arc<CallCampaign>,
    ns: String,
    name: String,
    uid: String,
    callees: Vec<Entry>,
    digest: String,
    plan: Plan,
    zones: HashMap<String, jiff::tz::TimeZone>,
    progress: Progress,
    callers: Vec<Caller>,
    next_caller: usize,
    limits: Limits,
    /// The schedule cannot be used (from the spec).
    schedule_problem: Option<Problem>,
    /// The numbers, trunks or limits do not allow the campaign (from the
    /// spec and the routing configuration).
    refs_problem: Option<Problem>,
    tokens: f64,
    refilled: Instant,
    dials: JoinSet<(Take, Result<pb::Call, NodeCallError>)>,
    /// Attempts recorded and waiting for their dial (a token).
    ready: VecDeque<Take>,
    /// Attempts whose dial RPC is still out (callee index).
    dialing_rpc: HashSet<Index>,
    cooldown: HashMap<String, Instant>,
    unreachable: HashMap<String, Instant>,
    written: Option<CallCampaignStatus>,
    last_flush: Instant,
    last_reconcile: Instant,
    start_time: Option<Time>,
    completion_time: Option<Time>,
    /// Results ConfigMaps written so far: chunks `0..results`.
    results: u32,
}

/// Runs one campaign until its task is aborted (leadership lost, campaign
/// deleted). `spec` carries the latest object.
pub async fn run(shared: Arc<Shared>, mut spec: watch::Receiver<Arc<CallCampaign>>) {
    let obj = spec.borrow_and_update().clone();
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let uid = obj.uid().unwrap_or_default();
    let mut events = shared.nodes.subscribe(&uid);
    let mut backoff = Duration::from_secs(1);
    let mut r = loop {
        let obj = spec.borrow_and_update().clone();
        match Runner::prepare(shared.clone(), obj.clone()).await {
            Ok(r) => break r,
            Err(p) => {
                info!(campaign = %format!("{ns}/{name}"), reason = p.reason, "campaign not started: {}", p.message);
                write_problem(&shared, &obj, &p).await;
                if p.fatal {
                    // Wait for a new spec; a fatal problem does not fix itself.
                    if spec.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
                tokio::select! {
                    r = spec.changed() => if r.is_err() { return },
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    };
    r.reconcile(true).await;
    let mut snapshot = shared.snapshot.clone();
    loop {
        r.step().await;
        let wake = r.next_wake();
        tokio::select! {
            changed = spec.changed() => {
                if changed.is_err() {
                    break;
                }
                let obj = spec.borrow_and_update().clone();
                r.set_spec(obj);
            }
            _ = snapshot.changed() => {
                snapshot.borrow_and_update();
                r.refresh_limits();
            }
            ev = events.recv() => match ev {
                Some(NodeEvent::Ended { call }) => r.ended(&call),
                Some(NodeEvent::Resync { node }) => r.reconcile_node(&node, false).await,
                None => break,
            },
            Some(done) = r.dials.join_next(), if !r.dials.is_empty() => {
                if let Ok((take, result)) = done {
                    r.dialled(take, result);
                }
            }
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
    shared.nodes.unsubscribe(&uid);
}

async fn write_problem(shared: &Shared, obj: &CallCampaign, p: &Problem) {
    let mut st = obj.status.clone().unwrap_or_default();
    let now = Timestamp::now();
    let g = obj.metadata.generation.unwrap_or(0);
    st.observed_generation = Some(g);
    st.phase = if p.fatal {
        phase::FAILED
    } else {
        phase::PENDING
    }
    .into();
    let v = Verdict {
        ok: false,
        reason: p.reason,
        message: p.message.clone(),
    };
    set_condition(
        &mut st.conditions,
        condition("Ready", &v, g, &obj_conditions(obj), now),
    );
    if p.fatal && st.completion_time.is_none() {
        st.completion_time = Some(Time(now));
    }
    if let Err(e) = patch_status(&shared.kube, obj, &st).await {
        warn!(error = %e, "cannot write campaign status");
    }
}

fn obj_conditions(obj: &CallCampaign) -> Vec<Condition> {
    obj.status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default()
}

fn set_condition(list: &mut Vec<Condition>, c: Condition) {
    match list.iter_mut().find(|x| x.type_ == c.type_) {
        Some(x) => *x = c,
        None => list.push(c),
    }
}

async fn patch_status(
    kube: &kube::Client,
    obj: &CallCampaign,
    st: &CallCampaignStatus,
) -> Result<(), kube::Error> {
    let api: Api<CallCampaign> =
        Api::namespaced(kube.clone(), &obj.namespace().unwrap_or_default());
    let patch = serde_json::json!({ "status": st });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
}

impl Runner {
    async fn prepare(shared: Arc<Shared>, obj: Arc<CallCampaign>) -> Result<Runner, Problem> {
        let ns = obj.namespace().unwrap_or_default();
        let name = obj.name_any();
        let uid = obj.uid().unwrap_or_default();
        let plan = Plan::new(obj.spec.schedule.as_ref())
            .map_err(|e| Problem::new("InvalidSchedule", e.to_string()))?;
        let callees = load_callees(&shared.kube, &obj).await?;
        let digest = callees::digest(&callees);
        if let Some(st) = &obj.status
            && !st.callees_digest.is_empty()
            && st.callees_digest != digest
        {
            return Err(Problem {
                reason: "CalleesChanged",
                message: "the callee ConfigMaps changed after the campaign started: results \
                          refer to callees by position, so the campaign cannot continue \
                          (create a new campaign for the new list)"
                    .into(),
                fatal: true,
            });
        }
        let zones = zones(&callees)?;
        let zone_names: Vec<Option<&str>> =
            callees.iter().map(|e| e.time_zone.as_deref()).collect();
        let mut progress = Progress::new(&zone_names, obj.spec.retry.clone())
            .map_err(|e| Problem::new("InvalidCallees", e.to_string()))?;
        // What earlier leaders recorded.
        let api: Api<ConfigMap> = Api::namespaced(shared.kube.clone(), &ns);
        let list = api
            .list(&ListParams::default().labels(&format!("{UID_LABEL}={uid}")))
            .await
            .map_err(|e| Problem::new("ResultsUnreadable", format!("listing results: {e}")))?;
        let mut written = 0u32;
        for cm in list.items {
            if let Some(n) = cm
                .name_any()
                .strip_prefix(&format!("{name}-results-"))
                .and_then(|n| n.parse::<u32>().ok())
            {
                written = written.max(n.saturating_add(1));
            }
            let Some(text) = cm.data.as_ref().and_then(|d| d.get(results::KEY)) else {
                continue;
            };
            let records = results::parse(text).map_err(|e| {
                Problem::new(
                    "ResultsUnreadable",
                    format!("ConfigMap {}: {e}", cm.name_any()),
                )
            })?;
            progress.restore(records);
        }
        let snap = shared.snapshot.borrow().clone();
        let (callers, limits, refs_problem) = match resolve_from(&obj, &snap) {
            Ok((c, l)) => (c, l, None),
            Err(p) => (
                Vec::new(),
                Limits {
                    max_concurrent: 0,
                    cps: 0.0,
                },
                Some(p),
            ),
        };
        let status = obj.status.clone().unwrap_or_default();
        let start_time = status.start_time.clone();
        let completion_time = status.completion_time.clone();
        info!(campaign = %format!("{ns}/{name}"), callees = callees.len(), "campaign loaded");
        Ok(Runner {
            shared,
            ns,
            name,
            uid,
            digest,
            callees,
            plan,
            zones,
            progress,
            callers,
            next_caller: 0,
            limits,
            schedule_problem: None,
            refs_problem,
            tokens: 1.0,
            refilled: Instant::now(),
            dials: JoinSet::new(),
            ready: VecDeque::new(),
            dialing_rpc: HashSet::new(),
            cooldown: HashMap::new(),
            unreachable: HashMap::new(),
            written: obj.status.clone(),
            obj,
            last_flush: Instant::now(),
            last_reconcile: Instant::now(),
            start_time,
            completion_time,
            results: written,
        })
    }

    fn key(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }

    fn set_spec(&mut self, obj: Arc<CallCampaign>) {
        self.progress.set_policy(obj.spec.retry.clone());
        // A schedule that does not parse keeps the last good plan, unused.
        self.schedule_problem = match Plan::new(obj.spec.schedule.as_ref()) {
            Ok(p) => {
                self.plan = p;
                None
            }
            Err(e) => Some(Problem::new("InvalidSchedule", e.to_string())),
        };
        self.obj = obj;
        self.refresh_limits();
    }

    fn refresh_limits(&mut self) {
        let snap = self.shared.snapshot.borrow().clone();
        self.refs_problem = match resolve_from(&self.obj, &snap) {
            Ok((c, l)) => {
                self.callers = c;
                self.limits = l;
                None
            }
            Err(p) => Some(p),
        };
    }

    /// Why the campaign cannot dial now, if it cannot.
    fn problem(&self) -> Option<&Problem> {
        self.schedule_problem
            .as_ref()
            .or(self.refs_problem.as_ref())
    }

    /// The window state of a zone now.
    fn window(&self, now: Timestamp, zone: Option<&str>) -> WindowState {
        self.plan.state(now, zone.and_then(|z| self.zones.get(z)))
    }

    /// Whether the campaign may start calls at all now.
    fn may_dial(&self) -> bool {
        self.problem().is_none() && !self.obj.spec.suspend && !self.callers.is_empty()
    }

    /// Nodes that take campaign calls now: known, ready, not draining, not
    /// cooling down after a refusal.
    fn live_nodes(&self) -> Vec<Arc<str>> {
        let view = self.shared.view.borrow().clone();
        let eps = self.shared.nodes.endpoints();
        let now = Instant::now();
        eps.keys()
            .filter(|n| view.node_ready.get(*n).copied().unwrap_or(false))
            .filter(|n| self.cooldown.get(*n).is_none_or(|t| *t <= now))
            .map(|n| Arc::from(n.as_str()))
            .collect()
    }

    /// One pass: end by schedule, hand out dials, write what changed.
    async fn step(&mut self) {
        let now = Timestamp::now();
        let ms = now.as_millisecond();
        if matches!(self.window(now, None), WindowState::Ended) && !self.progress.complete() {
            for (i, f) in self.progress.end(ms) {
                self.final_outcome(i, f);
            }
        }
        self.refill();
        if self.may_dial() {
            self.record_ahead(now).await;
            while self.tokens >= 1.0 && self.dials.len() < MAX_DIALS_IN_FLIGHT {
                let Some(t) = self.ready.pop_front() else {
                    break;
                };
                self.tokens -= 1.0;
                if self.start_time.is_none() {
                    self.start_time = Some(Time(now));
                }
                self.spawn_dial(t);
            }
        } else if !self.ready.is_empty() {
            // Suspended (or the spec stopped being usable): attempts recorded
            // but not dialled go back to the queue.
            for t in std::mem::take(&mut self.ready) {
                self.progress.untake(&t, ms);
            }
        }
        if self.last_reconcile.elapsed() >= RECONCILE_EVERY {
            self.reconcile(false).await;
        }
        if self.last_flush.elapsed() >= FLUSH_EVERY || self.progress.complete() {
            if let Err(e) = self.flush_results().await {
                warn!(campaign = %self.key(), error = %e, "cannot write campaign results");
            }
            self.write_status().await;
            self.last_flush = Instant::now();
        }
        let now = Timestamp::now();
        let limit = if self.may_dial() && self.phase(now) == phase::RUNNING {
            self.limits.max_concurrent
        } else {
            0
        };
        self.shared
            .metrics
            .observe(&self.ns, &self.name, &self.progress.counters(), limit);
    }

    /// Hands out and records the attempts of about the next second at the
    /// campaign's pace, so one results write covers many dials. The record
    /// comes first: a new leader must know every attempt that may exist.
    async fn record_ahead(&mut self, now: Timestamp) {
        let want = ((self.limits.cps * RECORD_AHEAD.as_secs_f64()).ceil() as usize)
            .clamp(1, MAX_DIALS_IN_FLIGHT);
        // Refilled when half used, not after every dial.
        if self.ready.len() > want / 2 {
            return;
        }
        let in_progress = self.progress.counters().in_progress;
        let room = self.limits.max_concurrent.saturating_sub(in_progress);
        let budget = (want - self.ready.len()).min(usize::try_from(room).unwrap_or(usize::MAX));
        if budget == 0 {
            return;
        }
        let ms = now.as_millisecond();
        let nodes = self.live_nodes();
        let open_zones: HashMap<Option<String>, bool> = self
            .progress
            .zones()
            .map(|z| {
                (
                    z.map(str::to_owned),
                    matches!(self.window(now, z), WindowState::Open { .. }),
                )
            })
            .collect();
        let open = |z: Option<&str>| {
            open_zones
                .get(&z.map(str::to_owned))
                .copied()
                .unwrap_or(false)
        };
        let mut load: HashMap<Arc<str>, u32> = nodes
            .iter()
            .map(|n| (n.clone(), self.progress.node_load(n)))
            .collect();
        let mut pick = || {
            let n = load
                .iter()
                .min_by_key(|(n, l)| (**l, n.to_string()))?
                .0
                .clone();
            if let Some(l) = load.get_mut(&n) {
                *l += 1;
            }
            Some(n)
        };
        let takes = self.progress.take(ms, budget, &open, &mut pick);
        if takes.is_empty() {
            return;
        }
        match self.flush_results().await {
            Ok(()) => self.ready.extend(takes),
            Err(e) => {
                warn!(campaign = %self.key(), error = %e, "cannot record attempts; not dialling");
                // The untake dirties the chunks again: rewritten next flush.
                for t in &takes {
                    self.progress.untake(t, ms);
                }
            }
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let dt = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        let burst = self.limits.cps.max(1.0);
        self.tokens = (self.tokens + dt * self.limits.cps).min(burst);
    }

    /// When to run the next step at the latest.
    fn next_wake(&self) -> Instant {
        let mut wake = Instant::now() + FLUSH_EVERY;
        if self.may_dial() && self.limits.cps > 0.0 && self.tokens < 1.0 {
            let secs = (1.0 - self.tokens) / self.limits.cps;
            wake = wake.min(Instant::now() + Duration::from_secs_f64(secs.clamp(0.001, 3600.0)));
        }
        // A retry already due waits for a window or a node: the regular
        // cadence checks on it (waking for it now would spin).
        if let Some(at) = self.progress.next_retry()
            && let Ok(ms) = u64::try_from(at.saturating_sub(now_ms()))
            && ms > 0
        {
            wake = wake.min(Instant::now() + Duration::from_millis(ms));
        }
        wake
    }

    fn spawn_dial(&mut self, t: Take) {
        let caller = &self.callers[self.next_caller % self.callers.len()];
        self.next_caller = self.next_caller.wrapping_add(1);
        let Some(callee) = self.callees.get(t.index as usize) else {
            return;
        };
        let spec = &self.obj.spec;
        let req = pb::DialRequest {
            from: caller.e164.clone(),
            to: callee.to.clone(),
            agent: (!callee.parameters.is_empty()).then(|| pb::AgentOverride {
                url: String::new(),
                parameters: callee.parameters.iter().cloned().collect(),
            }),
            ringing_timeout_seconds: spec.ringing_timeout_seconds.unwrap_or(0),
            queue_timeout_seconds: 0,
            max_duration_seconds: spec.max_call_duration_seconds.unwrap_or(0),
            headers: Default::default(),
            client_ref: nodes::client_ref(&self.uid, t.index, t.attempt),
        };
        let calls = self.shared.nodes.clone();
        self.dialing_rpc.insert(t.index);
        self.dials.spawn(async move {
            let r = calls.dial(&t.node, req).await;
            (t, r)
        });
    }

    /// A dial RPC answered.
    fn dialled(&mut self, t: Take, r: Result<pb::Call, NodeCallError>) {
        self.dialing_rpc.remove(&t.index);
        let ms = now_ms();
        match r {
            Ok(call) => {
                self.shared.metrics.dials(&self.ns, &self.name, "placed");
                // A dial that found the call already over (same key).
                if call.state() == pb::CallState::Completed {
                    self.ended(&call);
                }
            }
            Err(e) if e.permanent() => {
                self.shared.metrics.dials(&self.ns, &self.name, "refused");
                warn!(campaign = %self.key(), index = t.index, error = %e, "dial refused");
                if let Some(f) =
                    self.progress
                        .finish(t.index, t.attempt, Outcome::Failed, 0, None, ms)
                {
                    self.final_outcome(t.index, f);
                }
            }
            Err(e) if e.not_placed() => {
                self.shared
                    .metrics
                    .dials(&self.ns, &self.name, "not_placed");
                info!(campaign = %self.key(), node = %t.node, error = %e, "node did not take the call; trying another");
                self.cooldown
                    .insert(t.node.to_string(), Instant::now() + COOLDOWN);
                self.progress.untake(&t, ms);
            }
            Err(e) => {
                // The request may have reached the node: the next
                // reconciliation asks it.
                self.shared.metrics.dials(&self.ns, &self.name, "unknown");
                warn!(campaign = %self.key(), node = %t.node, error = %e, "dial outcome unknown; will ask the node");
            }
        }
    }

    /// A campaign call ended on `node`.
    fn ended(&mut self, call: &pb::Call) {
        let Some((uid, index, attempt)) = nodes::parse_ref(&call.client_ref) else {
            return;
        };
        if uid != self.uid {
            return;
        }
        let outcome = classify(call);
        let code = u16::try_from(call.final_code).unwrap_or(0);
        let code = if call.answered_at_ms > 0 { 200 } else { code };
        if let Some(f) =
            self.progress
                .finish(index, attempt, outcome, code, Some(&call.id), now_ms())
        {
            self.final_outcome(index, f);
        }
    }

    fn final_outcome(&mut self, index: Index, f: Final) {
        self.shared
            .metrics
            .outcome(&self.ns, &self.name, f.as_str());
        let (Some(callee), Some(slot)) =
            (self.callees.get(index as usize), self.progress.slot(index))
        else {
            return;
        };
        self.shared.webhook.send(
            self.obj.spec.webhook.as_deref(),
            HookOutcome {
                campaign: self.name.clone(),
                namespace: self.ns.clone(),
                index,
                id: callee.id.clone(),
                to: callee.to.clone(),
                outcome: f.as_str(),
                attempts: slot.attempts,
                code: slot.code,
                call_id: slot.call_id.as_deref().map(str::to_owned),
            },
        );
    }

    /// Asks the nodes what they have of this campaign and settles every
    /// attempt they answer for. `startup`: attempts a reachable node does not
    /// know were never placed (the previous leader stopped between recording
    /// and dialling) and go back to the queue.
    async fn reconcile(&mut self, startup: bool) {
        self.last_reconcile = Instant::now();
        let nodes: HashSet<String> = self
            .progress
            .dialing()
            .map(|(_, _, n)| n.to_string())
            .collect();
        for n in nodes {
            self.reconcile_node(&n, startup).await;
        }
    }

    /// The attempt's dial has not answered yet (or not started): the node
    /// may not know it, and that proves nothing.
    fn not_dialled_yet(&self, index: Index) -> bool {
        self.dialing_rpc.contains(&index) || self.ready.iter().any(|t| t.index == index)
    }

    async fn reconcile_node(&mut self, node: &str, startup: bool) {
        let mine: Vec<(Index, u8)> = self
            .progress
            .dialing()
            .filter(|(_, _, n)| n.as_ref() == node)
            .map(|(i, a, _)| (i, a))
            .collect();
        if mine.is_empty() {
            return;
        }
        let prefix = format!("{}{}/", nodes::PREFIX, self.uid);
        let ms = now_ms();
        match self.shared.nodes.list(node, &prefix).await {
            Ok(calls) => {
                self.unreachable.remove(node);
                let by_ref: BTreeMap<&str, &pb::Call> =
                    calls.iter().map(|c| (c.client_ref.as_str(), c)).collect();
                for (index, attempt) in mine {
                    let r = nodes::client_ref(&self.uid, index, attempt);
                    match by_ref.get(r.as_str()) {
                        Some(c) if c.state() == pb::CallState::Completed => self.ended(c),
                        Some(_) => {}
                        None if self.not_dialled_yet(index) => {}
                        None if startup => self.progress.requeue(index, attempt, ms),
                        None => {
                            if let Some(f) =
                                self.progress
                                    .finish(index, attempt, Outcome::Failed, 0, None, ms)
                            {
                                self.final_outcome(index, f);
                            }
                        }
                    }
                }
            }
            Err(e) => {
                let since = *self
                    .unreachable
                    .entry(node.to_owned())
                    .or_insert_with(Instant::now);
                let gone = !self.shared.nodes.endpoints().contains_key(node);
                if gone || since.elapsed() >= NODE_LOST_AFTER {
                    warn!(campaign = %self.key(), %node, error = %e, "media node lost: its campaign calls count as failed");
                    for (index, attempt) in mine {
                        if self.not_dialled_yet(index) {
                            continue;
                        }
                        if let Some(f) =
                            self.progress
                                .finish(index, attempt, Outcome::Failed, 0, None, ms)
                        {
                            self.final_outcome(index, f);
                        }
                    }
                    self.unreachable.remove(node);
                }
            }
        }
    }

    async fn flush_results(&mut self) -> Result<(), kube::Error> {
        let dirty = self.progress.take_dirty();
        let api: Api<ConfigMap> = Api::namespaced(self.shared.kube.clone(), &self.ns);
        let mut failed = None;
        for chunk in dirty {
            if failed.is_some() {
                self.progress.mark_dirty(chunk);
                continue;
            }
            let text = results::render(self.progress.chunk(chunk), &self.callees);
            let name = results::name(&self.name, chunk);
            let cm = ConfigMap {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(self.ns.clone()),
                    labels: Some(BTreeMap::from([
                        (NAME_LABEL.to_owned(), self.name.clone()),
                        (UID_LABEL.to_owned(), self.uid.clone()),
                    ])),
                    owner_references: Some(vec![self.owner()]),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([(results::KEY.to_owned(), text)])),
                ..Default::default()
            };
            let pp = PatchParams::apply(MANAGER).force();
            match api.patch(&name, &pp, &Patch::Apply(&cm)).await {
                Ok(_) => self.results = self.results.max(chunk.saturating_add(1)),
                Err(e) => {
                    self.progress.mark_dirty(chunk);
                    failed = Some(e);
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn owner(&self) -> OwnerReference {
        OwnerReference {
            api_version: CallCampaign::api_version(&()).into_owned(),
            kind: CallCampaign::kind(&()).into_owned(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(false),
        }
    }

    /// The campaign's phase now.
    fn phase(&self, now: Timestamp) -> &'static str {
        if self.progress.complete() {
            return phase::COMPLETED;
        }
        if self.problem().is_some() {
            return phase::PENDING;
        }
        if self.obj.spec.suspend {
            return phase::SUSPENDED;
        }
        let c = self.progress.counters();
        match self.window(now, None) {
            WindowState::NotYet { .. } if c.in_progress == 0 => phase::PENDING,
            WindowState::Closed { .. } | WindowState::NotYet { .. }
                if c.in_progress == 0 && !self.any_zone_open(now) =>
            {
                phase::WAITING_FOR_WINDOW
            }
            _ => phase::RUNNING,
        }
    }

    fn any_zone_open(&self, now: Timestamp) -> bool {
        self.progress
            .has_pending_in(&|z| matches!(self.window(now, z), WindowState::Open { .. }))
            || self.progress.next_retry().is_some()
    }

    async fn write_status(&mut self) {
        let now = Timestamp::now();
        let c = self.progress.counters();
        let phase = self.phase(now);
        if phase == phase::COMPLETED && self.completion_time.is_none() {
            self.completion_time = Some(Time(now));
            info!(campaign = %self.key(), answered = c.answered, done = c.done(), "campaign completed");
        }
        let g = self.obj.metadata.generation.unwrap_or(0);
        let prev = self
            .written
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        let ready = match self.problem() {
            Some(p) => Verdict {
                ok: false,
                reason: p.reason,
                message: p.message.clone(),
            },
            None => Verdict {
                ok: true,
                reason: "Ready",
                message: format!(
                    "{} callees; at most {} calls at once, {} per second",
                    c.total, self.limits.max_concurrent, self.limits.cps
                ),
            },
        };
        let window_msg = match self.window(now, None) {
            WindowState::Open { .. } => "the calling window is open".to_owned(),
            WindowState::Closed { opens } | WindowState::NotYet { opens } => {
                format!("the next calling window opens at {opens}")
            }
            WindowState::Ended => "the schedule has ended".to_owned(),
        };
        let progressing = Verdict {
            ok: matches!(phase, phase::RUNNING),
            reason: match phase {
                phase::RUNNING => "Dialling",
                phase::SUSPENDED => "Suspended",
                phase::WAITING_FOR_WINDOW => "WaitingForWindow",
                phase::COMPLETED => "Completed",
                phase::FAILED => "Failed",
                _ => "NotStarted",
            },
            message: format!(
                "{} of {} callees done, {} in progress, {} retrying; {window_msg}",
                c.done(),
                c.total,
                c.in_progress,
                c.retrying
            ),
        };
        let mut conditions = vec![
            condition("Ready", &ready, g, &prev, now),
            condition("Progressing", &progressing, g, &prev, now),
        ];
        conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
        let results = (0..self.results)
            .map(|ch| results::name(&self.name, ch))
            .collect();
        let st = CallCampaignStatus {
            observed_generation: Some(g),
            phase: phase.to_owned(),
            total: c.total,
            pending: c.pending,
            in_progress: c.in_progress,
            retrying: c.retrying,
            done: c.done(),
            answered: c.answered,
            busy: c.busy,
            no_answer: c.no_answer,
            failed: c.failed,
            not_attempted: c.not_attempted,
            attempts: c.attempts,
            start_time: self.start_time.clone(),
            completion_time: self.completion_time.clone(),
            results,
            callees_digest: self.digest.clone(),
            conditions,
        };
        let same = self.written.as_ref().is_some_and(|w| {
            let mut w = w.clone();
            w.conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
            w == st
        });
        if same {
            return;
        }
        match patch_status(&self.shared.kube, &self.obj, &st).await {
            Ok(()) => self.written = Some(st.clone()),
            Err(e) => warn!(campaign = %self.key(), error = %e, "cannot write campaign status"),
        }
    }
}

/// How an attempt ended, from the call as the node reports it.
pub fn classify(call: &pb::Call) -> Outcome {
    if call.answered_at_ms > 0 {
        return Outcome::Answered;
    }
    Outcome::of_unanswered(u16::try_from(call.final_code).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_from_calls() {
        let call = |answered: u64, code: u32| pb::Call {
            answered_at_ms: answered,
            final_code: code,
            ..Default::default()
        };
        assert_eq!(classify(&call(5, 200)), Outcome::Answered);
        assert_eq!(classify(&call(0, 486)), Outcome::Busy);
        assert_eq!(classify(&call(0, 600)), Outcome::Busy);
        assert_eq!(classify(&call(0, 487)), Outcome::NoAnswer);
        assert_eq!(classify(&call(0, 480)), Outcome::NoAnswer);
        assert_eq!(classify(&call(0, 503)), Outcome::Carrier5xx);
        assert_eq!(classify(&call(0, 404)), Outcome::Failed);
        assert_eq!(classify(&call(0, 0)), Outcome::Failed);
    }
}
