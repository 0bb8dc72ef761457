//! A search answer: the catalog builds it, the gateway passes it on to its callers.

use serde::{Deserialize, Serialize};

/// One matching track, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SearchHit {
    pub job_id: String,
    pub title: String,
    pub artist: Option<String>,
    pub album: Option<String>,
    pub tags: Vec<String>,
    pub score: f32,
}

/// One page of hits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SearchPage {
    /// How many tracks match in all.
    pub total: usize,
    pub hits: Vec<SearchHit>,
    /// Passed back as `cursor` for the next page; `null` on the last.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub next_cursor: Option<String>,
}
