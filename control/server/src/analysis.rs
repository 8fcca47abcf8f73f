//! One analysis check: the canary's and the stable's numbers of an interval against the
//! rollout's thresholds, with every value kept for the record.

use maille_api::{Measure, Sample, Verdict};
use maille_model::Analysis;

/// Canary requests below which an interval is "no data" when the spec says nothing.
pub const DEFAULT_MIN_REQUESTS: u64 = 20;

/// The verdict of an interval and the measures behind it.
pub fn evaluate(a: &Analysis, canary: &Sample, stable: &Sample) -> (Verdict, Vec<Measure>) {
    let min = a.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS);
    if canary.requests < min {
        return (Verdict::NoData, Vec::new());
    }
    let mut measures = Vec::new();
    if let Some(sr) = &a.success_rate {
        let threshold = match (sr.min, sr.max_drop_from_stable) {
            (Some(m), _) => Some(m),
            // Relative to the stable: without stable traffic, nothing to compare with.
            (None, Some(d)) => stable.success_rate.map(|s| (s - d).max(0.0)),
            _ => None,
        };
        if let Some(t) = threshold {
            let v = canary.success_rate;
            measures.push(Measure {
                metric: "successRate".into(),
                value: v,
                threshold: t,
                op: ">=".into(),
                pass: v.is_some_and(|v| v >= t - 1e-12),
            });
        }
    }
    if let Some(l) = &a.latency_p99 {
        let threshold = match (l.max_millis, l.max_ratio_to_stable) {
            (Some(m), _) => Some(m),
            (None, Some(r)) => stable.p99_millis.map(|s| s * r),
            _ => None,
        };
        if let Some(t) = threshold {
            let v = canary.p99_millis;
            measures.push(Measure {
                metric: "latencyP99".into(),
                value: v,
                threshold: t,
                op: "<=".into(),
                // No histogram with requests counted: the latency is unknown, not high.
                pass: v.is_none_or(|v| v <= t + 1e-9),
            });
        }
    }
    let verdict = if measures.iter().all(|m| m.pass) {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    (verdict, measures)
}

#[cfg(test)]
mod tests {
    use super::*;
    use maille_model::{LatencyP99, SuccessRate};

    fn sample(requests: u64, errors: u64, p99: f64) -> Sample {
        Sample::from_counts(requests, errors, Some(p99))
    }

    fn analysis(sr: SuccessRate, lat: Option<LatencyP99>) -> Analysis {
        Analysis {
            source: Default::default(),
            interval: None,
            min_requests: Some(10),
            max_no_data: None,
            failure_limit: None,
            success_rate: Some(sr),
            latency_p99: lat,
        }
    }

    #[test]
    fn absolute_and_relative_thresholds() {
        let abs = analysis(
            SuccessRate {
                min: Some(0.99),
                max_drop_from_stable: None,
            },
            Some(LatencyP99 {
                max_millis: Some(100.0),
                max_ratio_to_stable: None,
            }),
        );
        let (v, m) = evaluate(&abs, &sample(100, 1, 50.0), &sample(100, 0, 10.0));
        assert_eq!(v, Verdict::Pass, "{m:?}");
        let (v, m) = evaluate(&abs, &sample(100, 50, 50.0), &sample(100, 0, 10.0));
        assert_eq!(v, Verdict::Fail);
        assert_eq!(m[0].value, Some(0.5));
        assert!(!m[0].pass && m[1].pass);
        let (v, _) = evaluate(&abs, &sample(100, 0, 150.0), &sample(100, 0, 10.0));
        assert_eq!(v, Verdict::Fail, "slow canary");

        let rel = analysis(
            SuccessRate {
                min: None,
                max_drop_from_stable: Some(0.05),
            },
            Some(LatencyP99 {
                max_millis: None,
                max_ratio_to_stable: Some(2.0),
            }),
        );
        // The stable fails too (a shared dependency): 90% vs 92% is within 5 points.
        let (v, m) = evaluate(&rel, &sample(100, 10, 30.0), &sample(100, 8, 20.0));
        assert_eq!(v, Verdict::Pass, "{m:?}");
        assert!((m[0].threshold - 0.87).abs() < 1e-9);
        assert_eq!(m[1].threshold, 40.0);
        let (v, _) = evaluate(&rel, &sample(100, 0, 50.0), &sample(100, 0, 20.0));
        assert_eq!(v, Verdict::Fail, "2.5x the stable's p99");
    }

    #[test]
    fn too_few_requests_is_no_data_never_a_verdict() {
        let a = analysis(
            SuccessRate {
                min: Some(0.99),
                max_drop_from_stable: None,
            },
            None,
        );
        let (v, m) = evaluate(&a, &sample(9, 9, 1.0), &sample(1000, 0, 1.0));
        assert_eq!(v, Verdict::NoData);
        assert!(m.is_empty());
        let (v, _) = evaluate(&a, &Sample::default(), &Sample::default());
        assert_eq!(v, Verdict::NoData);
    }
}
