//! Pod start latencies (accepted → every container running), kept in bounded memory: the
//! most recent [`KEPT`] for quantiles and the benchmarks, and counts since start for the
//! kubelet's `kubelet_pod_start_sli_duration_seconds` histogram, whose buckets and count
//! must only grow. (Every start used to be kept: 16 bytes a pod, for as long as the agent
//! runs, on a node whose Jobs start a pod a second.)

use std::collections::VecDeque;
use std::time::Duration;

/// How many recent starts are kept.
pub const KEPT: usize = 1 << 16;

/// The Prometheus buckets (seconds) of `kubelet_pod_start_sli_duration_seconds`.
pub const SLI_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 180.0, 240.0, 300.0, 360.0, 480.0,
    600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
];

#[derive(Debug, Default)]
pub struct Starts {
    recent: VecDeque<Duration>,
    pub totals: Totals,
}

/// Starts since the agent started, their sum in seconds, and how many took at most each
/// of [`SLI_BUCKETS`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    pub count: u64,
    pub sum: f64,
    pub buckets: [u64; SLI_BUCKETS.len()],
}

impl Starts {
    pub fn record(&mut self, d: Duration) {
        if self.recent.len() == KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back(d);
        let (t, secs) = (&mut self.totals, d.as_secs_f64());
        t.count += 1;
        t.sum += secs;
        for (n, le) in t.buckets.iter_mut().zip(SLI_BUCKETS) {
            if secs <= *le {
                *n += 1;
            }
        }
    }

    /// The most recent starts, oldest first.
    pub fn recent(&self) -> Vec<Duration> {
        self.recent.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_are_kept_bounded_and_counted_for_good() {
        let mut s = Starts::default();
        for i in 0..KEPT as u64 + 10 {
            s.record(Duration::from_millis(if i % 2 == 0 { 1 } else { 700 }));
        }
        assert_eq!(s.recent().len(), KEPT, "bounded");
        let t = s.totals;
        assert_eq!(t.count, KEPT as u64 + 10);
        assert_eq!(t.buckets[0], (KEPT as u64 + 10) / 2, "≤ 0.5 s: the 1 ms ones");
        assert_eq!(t.buckets[1], t.count, "≤ 1 s: all");
        assert!((t.sum - (KEPT as f64 + 10.0) / 2.0 * 0.701).abs() < 1e-6);
    }
}
