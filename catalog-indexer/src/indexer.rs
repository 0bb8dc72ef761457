//! Handling one `media.converted`: tags from Last.fm (optional), the catalog rows, the index
//! document, then `media.catalogued` for the gateway; and `media.deleted`/`media.expired`:
//! the track leaves the catalog and the index, for good.

use std::sync::Arc;

use sqlx::PgPool;
use tracing::{info, warn};
use tunewire_contract::{CatalogChange, JobId, MediaCatalogued, MediaConverted};
use tunewire_events::{HandleError, HandleResultExt, Incoming, Publisher};

use crate::catalog;
use crate::lastfm::Tag;
use crate::search_index::{SearchIndex, TrackDoc};
use crate::tag_lookup::{self, TagLookup, Tags};

pub struct Indexer {
    pub db: PgPool,
    pub index: Arc<SearchIndex>,
    pub tags: Arc<TagLookup>,
}

impl Indexer {
    /// The tags now, and whether to ask Last.fm again later (it could not answer).
    async fn tags(&self, event: &MediaConverted, title: &str) -> (Vec<Tag>, &'static str, Option<String>) {
        let Some(artist) = &event.tags.artist else { return (vec![], "file", None) };
        match self.tags.tags(artist, title).await {
            Tags::Found(tags, source) => (tags, source, None),
            Tags::None => (vec![], "file", None),
            Tags::Later(reason) => {
                // The track is catalogued and searchable now; its tags follow.
                warn!(job_id = %event.job_id, %reason, "no Last.fm tags for now; will ask again");
                (vec![], "file", Some(reason))
            }
        }
    }

    pub async fn handle(self: Arc<Self>, msg: Incoming<CatalogChange>) -> Result<(), HandleError> {
        match msg.event {
            CatalogChange::Converted(event) => self.add(event, &msg.publisher).await,
            CatalogChange::Deleted(event) => self.remove(event.job_id, "deleted").await,
            CatalogChange::Expired(event) => self.remove(event.job_id, "expired").await,
        }
    }

    async fn unindex(&self, job_id: JobId) -> Result<(), HandleError> {
        let index = self.index.clone();
        tunewire_service_runtime::telemetry::propagation::spawn_blocking(move || index.remove(&job_id.to_string()))
            .await
            .or_retry("unindexing (task)")?
            .or_retry("unindexing")
    }

    async fn remove(&self, job_id: JobId, reason: &str) -> Result<(), HandleError> {
        catalog::remove(&self.db, job_id.as_uuid(), reason).await.or_retry("removing the track")?;
        self.unindex(job_id).await?;
        info!(%job_id, reason, "track removed from the catalog");
        Ok(())
    }

    async fn add(&self, event: MediaConverted, publisher: &Publisher) -> Result<(), HandleError> {
        let title = event.tags.title.clone().unwrap_or_else(|| event.source_filename.clone());
        let (mut tags, source, later) = self.tags(&event, &title).await;
        if let Some(genre) = &event.tags.genre {
            let genre = genre.to_lowercase();
            if !tags.iter().any(|t| t.name == genre) {
                tags.push(Tag { name: genre, weight: 100 });
            }
        }
        if !catalog::upsert(&self.db, &event, &title, &tags, source).await.or_retry("writing the catalog")? {
            info!(job_id = %event.job_id, "the job was deleted or expired; not cataloguing it");
            return Ok(());
        }
        if let (Some(reason), Some(artist)) = (later, &event.tags.artist) {
            tag_lookup::defer(&self.db, event.job_id, artist, &title, &reason)
                .await
                .or_retry("queueing the Last.fm retry")?;
        }
        let index = self.index.clone();
        let (job_id, owner) = (event.job_id.to_string(), event.owner.id.to_string());
        let (indexed_title, artist, album) = (title.clone(), event.tags.artist.clone(), event.tags.album.clone());
        let tag_names: Vec<String> = tags.iter().map(|t| t.name.clone()).collect();
        tunewire_service_runtime::telemetry::propagation::spawn_blocking(move || {
            let doc = TrackDoc {
                job_id,
                owner,
                title: &indexed_title,
                artist: artist.as_deref(),
                album: album.as_deref(),
                tags: tag_names,
            };
            index.upsert(&doc)
        })
        .await
        .or_retry("indexing (task)")?
        .or_retry("indexing")?;
        // A removal that committed while this document was on its way: take it out again.
        if catalog::is_removed(&self.db, event.job_id.as_uuid()).await.or_retry("checking for a removal")? {
            return self.unindex(event.job_id).await;
        }
        info!(job_id = %event.job_id, tags = tags.len(), "catalogued");
        self.tags.metrics.catalogued.inc();
        let catalogued = MediaCatalogued { job_id: event.job_id, tags: tags.into_iter().map(|t| t.name).collect() };
        publisher.publish(&catalogued).await.or_retry("publishing media.catalogued")
    }
}
