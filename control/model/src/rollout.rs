//! Maille's `Rollout`: a route's traffic moved from a stable virtual node to a canary step by
//! step, checked at every interval, promoted or rolled back by itself.

use crate::spec::{AmDuration, HttpRouteHeader, Sticky};
use serde::{Deserialize, Serialize};

/// A progressive delivery of one route from `stable` to `canary`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rollout {
    /// The mesh.
    pub mesh_name: String,
    /// Its name.
    pub rollout_name: String,
    /// What it does.
    pub spec: RolloutSpec,
}

/// What a rollout does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutSpec {
    /// The router of the route it drives.
    pub virtual_router_name: String,
    /// The route it drives: its weighted targets become `stable` and `canary`.
    pub route_name: String,
    /// The virtual node that serves today.
    pub stable: String,
    /// The virtual node that takes over.
    pub canary: String,
    /// Regular steps: the canary's weight grows by `stepWeight` up to `maxWeight`, each step
    /// lasting `stepDuration`. Give this or `steps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_weight: Option<u32>,
    /// The last regular step's weight (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_weight: Option<u32>,
    /// How long each regular step lasts (default: the analysis interval, else 60 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_duration: Option<AmDuration>,
    /// Explicit steps, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
    /// Users who reached the canary stay there as it grows: the split is a hash of this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
    /// A/B: requests matching any of these go to the canary at every step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<AbMatch>,
    /// Checks at every interval; without it, steps advance on time alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,
    /// Calls out at the rollout's moments; gates can halt it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<Webhook>,
    /// What success ends in.
    #[serde(default)]
    pub promotion: Promotion,
    /// What a rollback does.
    #[serde(default)]
    pub rollback: RollbackMode,
}

/// One explicit step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Step {
    /// The canary's weight, 0 to 100.
    pub weight: u32,
    /// How long it lasts (default as `stepDuration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<AmDuration>,
    /// Wait here until promoted (`maillectl rollout promote`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pause: bool,
}

/// A/B: a request that matches goes to the canary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AbMatch {
    /// Header conditions, all of which must hold (App Mesh's route header matches).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HttpRouteHeader>,
    /// Cookie conditions: the cookie is present with exactly this value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cookies: Vec<CookieMatch>,
}

/// A cookie and its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CookieMatch {
    /// The cookie's name.
    pub name: String,
    /// Its exact value.
    pub value: String,
}

/// The checks run at every interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Analysis {
    /// Where the numbers come from (default: the mesh's own stats).
    #[serde(default)]
    pub source: MetricSource,
    /// Time between checks, 1 s to 1 h (default 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<AmDuration>,
    /// Fewer canary requests than this in an interval is "no data": the rollout holds,
    /// neither promoted nor failed (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    /// After this many intervals in a row without data the rollout rolls back (default:
    /// it holds for ever).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_no_data: Option<u32>,
    /// Failed checks tolerated; one more rolls back (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_limit: Option<u32>,
    /// The canary's share of non-5xx answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<SuccessRate>,
    /// The canary's 99th percentile latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p99: Option<LatencyP99>,
}

/// Where analysis reads its numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricSource {
    /// `mesh` (the Envoys' own stats, sent to the control server; no AWS needed) or
    /// `cloudwatch` (what the collectors export).
    #[serde(default, rename = "type")]
    pub kind: SourceKind,
    /// CloudWatch namespace (default `Maille`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The kinds of [`MetricSource`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SourceKind {
    /// The Envoys' stats, pushed to the control server.
    #[default]
    Mesh,
    /// Amazon CloudWatch `GetMetricData`.
    Cloudwatch,
}

/// A success-rate threshold: absolute, or relative to the stable's in the same interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SuccessRate {
    /// At least this share of the canary's answers are not 5xx (0 to 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// The canary's rate is at most this far below the stable's (0 to 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_drop_from_stable: Option<f64>,
}

/// A latency threshold: absolute, or relative to the stable's in the same interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LatencyP99 {
    /// At most this many milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_millis: Option<f64>,
    /// At most this multiple of the stable's p99 (above 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ratio_to_stable: Option<f64>,
}

/// A call out at one of the rollout's moments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Webhook {
    /// Its name, in status and events.
    pub name: String,
    /// When it is called.
    #[serde(rename = "type")]
    pub kind: WebhookKind,
    /// `http://` or `https://` URL; the body is the rollout's status (JSON).
    pub url: String,
    /// How long to wait for an answer, 100 ms to 60 s (default 5 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_millis: Option<u64>,
}

/// When a webhook is called. Gates (`pre-rollout`, `pre-step`, `confirm-promotion`) halt
/// the rollout while they answer non-2xx or time out; the others only notify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WebhookKind {
    /// Before the first step.
    PreRollout,
    /// Before each step's weight is set.
    PreStep,
    /// Before promotion.
    ConfirmPromotion,
    /// After success.
    PostRollout,
    /// When rolling back.
    Rollback,
}

impl WebhookKind {
    /// Whether a refusal halts the rollout.
    pub fn is_gate(self) -> bool {
        matches!(
            self,
            WebhookKind::PreRollout | WebhookKind::PreStep | WebhookKind::ConfirmPromotion
        )
    }
}

/// What a successful rollout ends in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Promotion {
    /// The canary at weight 100, the stable at 0 (both stay targets).
    #[default]
    FullWeight,
    /// The route rewritten to the canary alone.
    ReplaceRoute,
}

/// What a rollback does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RollbackMode {
    /// All traffic back on the stable at once.
    #[default]
    Immediate,
    /// Back down the steps, one per interval (a breaker trip always rolls back at once).
    StepBack,
}

/// Longest step or interval.
pub const MAX_STEP_MS: u64 = 24 * 3600 * 1000;
/// Most steps.
pub const MAX_STEPS: usize = 100;
/// Most webhooks, A/B matches.
pub const MAX_WEBHOOKS: usize = 10;

impl RolloutSpec {
    /// The analysis interval in ms.
    pub fn interval_ms(&self) -> u64 {
        self.analysis
            .as_ref()
            .and_then(|a| a.interval)
            .map(|d| d.millis())
            .unwrap_or(10_000)
    }

    /// The steps, as weights and durations (ms; `None` for a pause), whichever form the
    /// spec uses.
    pub fn plan(&self) -> Vec<(u32, Option<u64>)> {
        let default_ms = self.step_duration.map(|d| d.millis()).unwrap_or_else(|| {
            if self.analysis.is_some() {
                self.interval_ms()
            } else {
                60_000
            }
        });
        if !self.steps.is_empty() {
            return self
                .steps
                .iter()
                .map(|s| {
                    (
                        s.weight,
                        (!s.pause).then(|| s.duration.map(|d| d.millis()).unwrap_or(default_ms)),
                    )
                })
                .collect();
        }
        let step = self.step_weight.unwrap_or(100).clamp(1, 100);
        let max = self.max_weight.unwrap_or(100).clamp(1, 100);
        let mut out = Vec::new();
        let mut w = step.min(max);
        loop {
            out.push((w, Some(default_ms)));
            if w >= max || out.len() >= MAX_STEPS {
                break;
            }
            w = (w + step).min(max);
        }
        out
    }
}
