//! Handling one `media.converted`: tags from Last.fm (optional), the catalog rows, the index
//! document, then `media.catalogued` for the gateway.

use std::sync::Arc;

use sqlx::PgPool;
use tracing::{info, warn};
use tunewire_events::{HandleError, HandleResultExt, Incoming, MediaCatalogued, MediaConverted};

use crate::catalog;
use crate::lastfm::{Lastfm, Tag};
use crate::search_index::{SearchIndex, TrackDoc};

pub struct Indexer {
    pub db: PgPool,
    pub index: Arc<SearchIndex>,
    pub lastfm: Option<Lastfm>,
}

impl Indexer {
    async fn tags(&self, event: &MediaConverted, title: &str) -> (Vec<Tag>, &'static str) {
        let (Some(lastfm), Some(artist)) = (&self.lastfm, &event.tags.artist) else { return (vec![], "file") };
        match lastfm.top_tags(artist, title).await {
            Ok(found) => found,
            Err(e) => {
                // The track is catalogued without tags rather than held back.
                warn!(job_id = %event.job_id, error = %e, "no Last.fm tags for now");
                (vec![], "file")
            }
        }
    }

    pub async fn handle(self: Arc<Self>, msg: Incoming<MediaConverted>) -> Result<(), HandleError> {
        let event = msg.event;
        let title = event.tags.title.clone().unwrap_or_else(|| event.source_filename.clone());
        let (mut tags, source) = self.tags(&event, &title).await;
        if let Some(genre) = &event.tags.genre {
            let genre = genre.to_lowercase();
            if !tags.iter().any(|t| t.name == genre) {
                tags.push(Tag { name: genre, weight: 100 });
            }
        }
        catalog::upsert(&self.db, &event, &title, &tags, source).await.or_retry("writing the catalog")?;
        let index = self.index.clone();
        let (job_id, owner) = (event.job_id.to_string(), event.owner.id.to_string());
        let (indexed_title, artist, album) = (title.clone(), event.tags.artist.clone(), event.tags.album.clone());
        let tag_names: Vec<String> = tags.iter().map(|t| t.name.clone()).collect();
        tokio::task::spawn_blocking(move || {
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
        info!(job_id = %event.job_id, tags = tags.len(), "catalogued");
        let catalogued = MediaCatalogued { job_id: event.job_id, tags: tags.into_iter().map(|t| t.name).collect() };
        msg.publisher.publish(&catalogued).await.or_retry("publishing media.catalogued")
    }
}
