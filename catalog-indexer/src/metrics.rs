//! The catalog's Prometheus metrics: tracks catalogued, Last.fm calls by outcome, cache hits,
//! the backlog of tracks waiting for tags, whether Last.fm refuses the key, search latency.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone)]
pub struct CatalogMetrics {
    pub catalogued: Counter,
    pub lastfm_requests: Family<OutcomeLabels, Counter>,
    pub lastfm_cache_hits: Counter,
    pub lastfm_backlog: Gauge,
    pub lastfm_key_rejected: Gauge,
    pub search_duration: Histogram,
}

impl Default for CatalogMetrics {
    fn default() -> Self {
        Self {
            catalogued: Counter::default(),
            lastfm_requests: Family::default(),
            lastfm_cache_hits: Counter::default(),
            lastfm_backlog: Gauge::default(),
            lastfm_key_rejected: Gauge::default(),
            // 0.1 ms to about 3 s.
            search_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 15)),
        }
    }
}

impl CatalogMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "tracks_catalogued",
            "Converted tracks written to the catalog and index",
            self.catalogued.clone(),
        );
        registry.register(
            "lastfm_requests",
            "Calls to Last.fm by outcome: ok, transient (retried later), key_rejected, permanent",
            self.lastfm_requests.clone(),
        );
        registry.register("lastfm_cache_hits", "Tag lookups answered from the cache", self.lastfm_cache_hits.clone());
        registry.register("lastfm_backlog", "Tracks waiting for Last.fm to answer", self.lastfm_backlog.clone());
        registry.register(
            "lastfm_key_rejected",
            "1 while Last.fm refuses the API key (tags wait in the backlog), else 0",
            self.lastfm_key_rejected.clone(),
        );
        registry.register_with_unit(
            "search_duration",
            "Time to answer a search",
            Unit::Seconds,
            self.search_duration.clone(),
        );
    }

    pub fn lastfm(&self, outcome: &'static str) {
        self.lastfm_requests.get_or_create(&OutcomeLabels { outcome }).inc();
        self.lastfm_key_rejected.set(i64::from(outcome == "key_rejected"));
    }
}
