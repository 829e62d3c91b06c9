//! Summaries of a session still running: a pipeline sink makes one at most once per
//! period (on the pipeline task, from the very totals and validator the exit summary is
//! made of) and publishes it; the metrics endpoint and the `--snapshot-every` writer read
//! the latest. So a scrape, a snapshot line and the exit summary agree by construction.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use super::summary::Summary;
use crate::{
    pipeline::{Sink, Totals},
    validate::Validator,
};

/// How often a running session's summary is remade: the metrics' resolution.
pub const SNAPSHOT_PERIOD: Duration = Duration::from_secs(1);

/// `stop_reason` of a snapshot of a session that has not ended.
pub const RUNNING: &str = "running";

/// Makes the summary from the pipeline's state (each command knows its other inputs).
pub type MakeSummary = Box<dyn FnMut(&Validator, &Totals) -> Summary + Send>;

/// The latest published summary, shared between the pipeline and its readers.
#[derive(Clone, Default)]
pub struct LatestSummary(Arc<Mutex<Option<Arc<Summary>>>>);

impl LatestSummary {
    pub fn get(&self) -> Option<Arc<Summary>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set(&self, s: Summary) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(s));
    }
}

/// The pipeline sink that publishes snapshots. Add it after the statistics sink.
pub struct SnapshotSink {
    make: MakeSummary,
    latest: LatestSummary,
    period: Duration,
    last: Option<Instant>,
}

impl SnapshotSink {
    pub fn new(make: MakeSummary, latest: LatestSummary, period: Duration) -> Self {
        Self {
            make,
            latest,
            period,
            last: None,
        }
    }

    fn publish(&mut self, validator: &Validator, totals: &Totals) {
        let mut s = (self.make)(validator, totals);
        s.ended_at = None;
        s.stop_reason = RUNNING.into();
        self.latest.set(s);
        self.last = Some(Instant::now());
    }
}

impl Sink for SnapshotSink {
    fn flush(&mut self, validator: &Validator, totals: &Totals) {
        if self.last.is_none_or(|t| t.elapsed() >= self.period) {
            self.publish(validator, totals);
        }
    }

    /// The source ended: publish what it delivered, whatever the period says.
    fn finish(&mut self, validator: &Validator, totals: &Totals) {
        self.publish(validator, totals);
    }
}

#[cfg(test)]
mod tests {
    use vmatrace_common::model::Generation;

    use super::*;
    use crate::{export::summary::SummaryInput, pipeline::Pipeline, trace::TraceHeader};

    fn maker() -> MakeSummary {
        let header = TraceHeader::synthetic(Generation::V7_0);
        Box::new(move |v, t| {
            Summary::build(SummaryInput {
                mode: "replay",
                header: &header,
                totals: t,
                validator: v,
                duration_ns: 0,
                stop_reason: String::new(),
                anomaly_log: None,
                recording: None,
                replay: None,
                stats: None,
                programs: Vec::new(),
                startup_cpu_s: None,
                stop_cpu_s: None,
            })
        })
    }

    #[test]
    fn publishes_at_most_once_a_period_and_at_the_end() {
        let latest = LatestSummary::default();
        let mut p = Pipeline::new(Generation::V7_0);
        p.add_sink(Box::new(SnapshotSink::new(
            maker(),
            latest.clone(),
            Duration::from_secs(3600),
        )));
        assert!(latest.get().is_none());
        p.flush();
        let first = latest.get().expect("first flush publishes");
        assert_eq!(first.stop_reason, RUNNING);
        assert_eq!(first.ended_at, None);
        p.handle_events(&[vmatrace_common::Event::ZERO]);
        p.flush();
        assert!(Arc::ptr_eq(&first, &latest.get().expect("kept")), "not due");
        p.finish();
        let last = latest.get().expect("final");
        assert_eq!(last.events.total, p.totals.total_events());
    }
}
