//! The converter's Prometheus metrics: conversions by outcome, and for the converted ones
//! how long they took, how many times faster than real time, and the bytes in and out.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone)]
pub struct ConversionMetrics {
    conversions: Family<OutcomeLabels, Counter>,
    duration: Histogram,
    realtime_factor: Histogram,
    bytes_in: Counter,
    bytes_out: Counter,
}

impl Default for ConversionMetrics {
    fn default() -> Self {
        Self {
            conversions: Family::default(),
            // 0.1 s to about 27 minutes.
            duration: Histogram::new(exponential_buckets(0.1, 2.0, 15)),
            // 1x to 4096x real time.
            realtime_factor: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
        }
    }
}

impl ConversionMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("conversions", "Jobs converted or failed for good, by outcome", self.conversions.clone());
        registry.register_with_unit(
            "conversion_duration",
            "Time to convert a job, reading the original and storing the MP3 included",
            Unit::Seconds,
            self.duration.clone(),
        );
        registry.register(
            "conversion_realtime_factor",
            "Seconds of audio converted per second of conversion",
            self.realtime_factor.clone(),
        );
        registry.register_with_unit(
            "conversion_input",
            "Bytes of originals converted",
            Unit::Bytes,
            self.bytes_in.clone(),
        );
        registry.register_with_unit("conversion_output", "Bytes of MP3 written", Unit::Bytes, self.bytes_out.clone());
    }

    pub fn converted(&self, took: std::time::Duration, audio_s: f64, bytes_in: u64, bytes_out: u64) {
        self.conversions.get_or_create(&OutcomeLabels { outcome: "converted" }).inc();
        let took = took.as_secs_f64();
        self.duration.observe(took);
        if took > 0.0 {
            self.realtime_factor.observe(audio_s / took);
        }
        self.bytes_in.inc_by(bytes_in);
        self.bytes_out.inc_by(bytes_out);
    }

    pub fn failed(&self) {
        self.conversions.get_or_create(&OutcomeLabels { outcome: "failed" }).inc();
    }
}
