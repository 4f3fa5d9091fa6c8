//! `CallCampaign`: a list of callees dialled from the fleet at a pace, within
//! calling windows, with retries. See docs/campaigns.md.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Outbound calls to a list of callees, paced, windowed and retried.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "switchboard.dev",
    version = "v1alpha1",
    kind = "CallCampaign",
    plural = "callcampaigns",
    shortname = "camp",
    namespaced,
    status = "CallCampaignStatus",
    category = "switchboard",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Total", type_ = "integer", json_path = ".status.total"),
    printcolumn(name = "Done", type_ = "integer", json_path = ".status.done"),
    printcolumn(
        name = "In progress",
        type_ = "integer",
        json_path = ".status.inProgress"
    ),
    printcolumn(name = "Failed", type_ = "integer", json_path = ".status.failed"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct CallCampaignSpec {
    /// PhoneNumbers (same namespace, by name) whose numbers are the caller
    /// ID, used round-robin. Their trunks, fallback trunks, agents and limits
    /// apply to the campaign's calls.
    #[schemars(length(min = 1, max = 100), inner(length(min = 1, max = 253)))]
    #[x_kube(validation = Rule::new("self.all(t, self.exists_one(u, u == t))")
        .message("from must not repeat a number"))]
    pub from: Vec<String>,
    /// Who to call. Fixed once created: results refer to callees by their
    /// position in this list.
    #[x_kube(validation = Rule::new("self == oldSelf").message("callees are immutable"))]
    pub callees: Callees,
    /// How fast to call.
    #[serde(default)]
    pub pacing: Pacing,
    /// When to call (default: now, at any time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// Which outcomes are tried again.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Stops new dials (calls in progress finish); setting it back to false
    /// continues where the campaign stopped.
    #[serde(default)]
    pub suspend: bool,
    /// Seconds a callee may ring before the attempt counts as no answer
    /// (default: the trunk's setting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 300))]
    pub ringing_timeout_seconds: Option<u32>,
    /// Hang up answered calls after this many seconds (default: the
    /// number's or trunk's limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub max_call_duration_seconds: Option<u32>,
    /// Each callee's final outcome is POSTed here as JSON (retried with
    /// backoff like call status webhooks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), pattern(r"^https?://\S+$"))]
    pub webhook: Option<String>,
}

/// The callees: inline entries for small campaigns, ConfigMaps for large
/// ones. Inline entries come first, then each ConfigMap in order (its keys
/// in name order, each key's lines in order).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self.inline) + size(self.configMaps) > 0")
    .message("callees: give inline entries or configMaps"))]
pub struct Callees {
    /// Callees listed in the resource (at most 1,000).
    #[serde(default)]
    #[schemars(length(max = 1000))]
    pub inline: Vec<Callee>,
    /// ConfigMaps (same namespace) holding callees as CSV or JSON lines.
    #[serde(default)]
    #[schemars(length(max = 200))]
    pub config_maps: Vec<CalleeConfigMap>,
}

/// One callee.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Callee {
    /// The number to call, E.164.
    #[schemars(length(min = 4, max = 16), pattern(r"^\+[1-9][0-9]{2,14}$"))]
    pub to: String,
    /// The caller's own id of this callee, echoed in results and webhooks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub id: Option<String>,
    /// Passed to the agent as customParameters, over the number's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub parameters: BTreeMap<String, String>,
    /// IANA time zone of this callee for the calling windows (default: the
    /// schedule's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,
}

/// A ConfigMap of callees. Each key holds lines: with format `csv`, a header
/// line naming the columns (`to` required; `id` and `timeZone` optional;
/// every other column is an agent parameter); with `jsonl`, one JSON object
/// per line with the fields of an inline callee. Empty lines and lines
/// starting with `#` are skipped.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CalleeConfigMap {
    /// Name of the ConfigMap.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The lines' format (default: `csv` for keys ending in `.csv`, else
    /// `jsonl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<CalleeFormat>,
}

/// How a ConfigMap's callees are written.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CalleeFormat {
    /// Comma-separated values with a header line.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

/// The campaign's pace. The trunks' fleet-wide limits apply as well.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pacing {
    /// Calls of this campaign in progress at once.
    #[serde(default = "default_concurrent")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_concurrent_calls: u32,
    /// New calls per second (fractions allowed: 0.5 is one call every two
    /// seconds).
    #[serde(default = "default_cps")]
    #[schemars(range(min = 0.01, max = 1000.0))]
    pub calls_per_second: f64,
    /// Channels of each trunk kept free for inbound calls: the campaign
    /// uses at most the trunk's maxConcurrentCalls minus this.
    #[serde(default)]
    #[schemars(range(max = 10000))]
    pub reserve_inbound: u32,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing {
            max_concurrent_calls: default_concurrent(),
            calls_per_second: default_cps(),
            reserve_inbound: 0,
        }
    }
}

fn default_concurrent() -> u32 {
    10
}

fn default_cps() -> f64 {
    1.0
}

/// When calls may be placed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.startTime) || !has(self.endTime) || timestamp(self.startTime) < timestamp(self.endTime)")
    .message("schedule.startTime must be before endTime"))]
pub struct Schedule {
    /// IANA time zone of the windows, e.g. America/New_York.
    #[serde(default = "utc")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: String,
    /// Calling windows; a call starts only inside one (in the callee's time
    /// zone when it has one). Empty: any time.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub windows: Vec<Window>,
    /// No calls before this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// No new calls after this instant: callees not reached by then end as
    /// not attempted, and the campaign completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<Time>,
}

fn utc() -> String {
    "UTC".into()
}

/// One calling window: the days it applies to and a local time range.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.from < self.to").message("a window's from must be before its to"))]
pub struct Window {
    /// Days of the week (default: every day).
    #[serde(default)]
    #[schemars(length(max = 7))]
    pub days: Vec<Weekday>,
    /// Local start, "HH:MM" (24-hour).
    #[schemars(length(min = 5, max = 5), pattern(r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub from: String,
    /// Local end, "HH:MM" (24-hour, "24:00" for midnight), exclusive.
    #[schemars(
        length(min = 5, max = 5),
        pattern(r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$")
    )]
    pub to: String,
}

/// A day of the week.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[allow(missing_docs)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// Attempt outcomes a campaign can retry.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// The callee was busy (486, 600).
    Busy,
    /// Nobody answered within the ringing timeout (or 480, 408).
    NoAnswer,
    /// The call failed another way (no route, refused, a lost node).
    Failed,
    /// The carrier answered 5xx.
    Carrier5xx,
}

/// Which outcomes are tried again, how often and how soon.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Outcomes that are retried.
    #[serde(default = "default_retry_on")]
    #[schemars(length(max = 4))]
    pub on: Vec<RetryOn>,
    /// Attempts per callee in all, the first included (1: no retries).
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 20))]
    pub max_attempts: u32,
    /// Wait before the first retry; each further retry waits twice as long,
    /// up to maxBackoffSeconds.
    #[serde(default = "default_backoff")]
    #[schemars(range(min = 0, max = 604800))]
    pub backoff_seconds: u32,
    /// Longest wait between attempts.
    #[serde(default = "default_max_backoff")]
    #[schemars(range(min = 0, max = 604800))]
    pub max_backoff_seconds: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            on: default_retry_on(),
            max_attempts: one(),
            backoff_seconds: default_backoff(),
            max_backoff_seconds: default_max_backoff(),
        }
    }
}

fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::Busy, RetryOn::NoAnswer]
}

fn one() -> u32 {
    1
}

fn default_backoff() -> u32 {
    300
}

fn default_max_backoff() -> u32 {
    3600
}

/// Observed state of a campaign. Per-callee outcomes are not here: they go
/// to the results ConfigMaps named in `results` and to the webhook.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallCampaignStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pending, Running, Suspended, WaitingForWindow, Completed or Failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
    /// Callees in the campaign.
    #[serde(default)]
    pub total: u64,
    /// Callees not attempted yet.
    #[serde(default)]
    pub pending: u64,
    /// Callees with an attempt in progress.
    #[serde(default)]
    pub in_progress: u64,
    /// Callees waiting for a retry.
    #[serde(default)]
    pub retrying: u64,
    /// Callees finished: answered + busy + noAnswer + failed + notAttempted.
    #[serde(default)]
    pub done: u64,
    /// Callees whose call was answered.
    #[serde(default)]
    pub answered: u64,
    /// Callees that ended busy (after their retries).
    #[serde(default)]
    pub busy: u64,
    /// Callees that ended unanswered (after their retries).
    #[serde(default)]
    pub no_answer: u64,
    /// Callees whose calls failed otherwise (after their retries).
    #[serde(default)]
    pub failed: u64,
    /// Callees never attempted because the schedule's endTime passed.
    #[serde(default)]
    pub not_attempted: u64,
    /// Attempts started in all (retries included).
    #[serde(default)]
    pub attempts: u64,
    /// When the first call was placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the campaign completed or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// The ConfigMaps holding per-callee results (`results.csv`), in callee
    /// order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<String>,
    /// Digest of the callee list the campaign started with: a change of the
    /// callee ConfigMaps afterwards fails the campaign instead of
    /// renumbering its results.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub callees_digest: String,
    /// Ready (the spec is usable) and Progressing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
