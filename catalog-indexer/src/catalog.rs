//! The catalog in PostgreSQL (schema `catalog`), the source of truth. Upserts are keyed by
//! job id and normalised names, so a redelivered event changes nothing.

use sqlx::{PgPool, Postgres, Transaction};
use tunewire_contract::MediaConverted;

use crate::lastfm::Tag;

/// Case-, accent- and whitespace-insensitive key for matching names ("Beyoncé" and
/// "beyonce " are one artist); the display form is stored beside it.
pub fn name_key(name: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    use unicode_normalization::char::is_combining_mark;
    let folded: String = name.nfkd().filter(|c| !is_combining_mark(*c)).collect();
    folded.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

async fn upsert_artist(tx: &mut Transaction<'_, Postgres>, name: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO catalog.artists (name, name_key) VALUES ($1, $2)
         ON CONFLICT (name_key) DO UPDATE SET name_key = EXCLUDED.name_key RETURNING id",
    )
    .bind(name)
    .bind(name_key(name))
    .fetch_one(&mut **tx)
    .await
}

async fn upsert_album(tx: &mut Transaction<'_, Postgres>, artist_id: i64, title: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO catalog.albums (artist_id, title, title_key) VALUES ($1, $2, $3)
         ON CONFLICT (artist_id, title_key) DO UPDATE SET title_key = EXCLUDED.title_key RETURNING id",
    )
    .bind(artist_id)
    .bind(title)
    .bind(name_key(title))
    .fetch_one(&mut **tx)
    .await
}

/// Serialises the changes to one job's track (its addition and its removal) across
/// handlers and replicas, until the transaction ends.
async fn lock_job(tx: &mut Transaction<'_, Postgres>, job: uuid::Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))").bind(job).execute(&mut **tx).await?;
    Ok(())
}

/// Whether the job was deleted or expired (its track must not come back).
pub async fn is_removed(db: &PgPool, job: uuid::Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM catalog.removed_jobs WHERE job_id = $1)")
        .bind(job)
        .fetch_one(db)
        .await
}

/// Forgets the job's track (tags and Last.fm backlog go with it) and remembers why, so that
/// its `media.converted` arriving later adds nothing.
pub async fn remove(db: &PgPool, job: uuid::Uuid, reason: &str) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    lock_job(&mut tx, job).await?;
    sqlx::query("INSERT INTO catalog.removed_jobs (job_id, reason) VALUES ($1, $2) ON CONFLICT (job_id) DO NOTHING")
        .bind(job)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM catalog.tracks WHERE job_id = $1").bind(job).execute(&mut *tx).await?;
    tx.commit().await
}

/// Writes the track, its artist, album and tags in one transaction; `false` (and nothing
/// written) when the job was removed.
pub async fn upsert(
    db: &PgPool,
    event: &MediaConverted,
    title: &str,
    tags: &[Tag],
    source: &str,
) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin().await?;
    lock_job(&mut tx, event.job_id.as_uuid()).await?;
    let removed: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM catalog.removed_jobs WHERE job_id = $1)")
        .bind(event.job_id.as_uuid())
        .fetch_one(&mut *tx)
        .await?;
    if removed {
        return Ok(false);
    }
    let artist_id = match &event.tags.artist {
        Some(artist) => Some(upsert_artist(&mut tx, artist).await?),
        None => None,
    };
    let album_id = match (artist_id, &event.tags.album) {
        (Some(artist_id), Some(album)) => Some(upsert_album(&mut tx, artist_id, album).await?),
        _ => None,
    };
    sqlx::query(
        "INSERT INTO catalog.tracks (job_id, owner_id, title, artist_id, album_id, genre, duration_s, bitrate, sample_rate, audio_file_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (job_id) DO UPDATE SET title = EXCLUDED.title, artist_id = EXCLUDED.artist_id,
             album_id = EXCLUDED.album_id, genre = EXCLUDED.genre, updated_at = now()",
    )
    .bind(event.job_id.as_uuid())
    .bind(event.owner.id.as_uuid())
    .bind(title)
    .bind(artist_id)
    .bind(album_id)
    .bind(&event.tags.genre)
    .bind(event.output.duration_s)
    .bind(event.output.bitrate as i32)
    .bind(event.output.sample_rate as i32)
    .bind(event.output.file_id.as_str())
    .execute(&mut *tx)
    .await?;
    insert_tags(&mut tx, event.job_id.as_uuid(), tags, source).await?;
    tx.commit().await?;
    Ok(true)
}

async fn insert_tags(
    tx: &mut Transaction<'_, Postgres>,
    job: uuid::Uuid,
    tags: &[Tag],
    source: &str,
) -> Result<(), sqlx::Error> {
    for tag in tags {
        let tag_id: i64 = sqlx::query_scalar(
            "INSERT INTO catalog.tags (name) VALUES ($1) ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id",
        )
        .bind(&tag.name)
        .fetch_one(&mut **tx)
        .await?;
        sqlx::query(
            "INSERT INTO catalog.track_tags (job_id, tag_id, weight, source) VALUES ($1, $2, $3, $4)
             ON CONFLICT (job_id, tag_id) DO UPDATE SET weight = EXCLUDED.weight, source = EXCLUDED.source",
        )
        .bind(job)
        .bind(tag_id)
        .bind(tag.weight)
        .bind(source)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Adds tags that arrived late (the Last.fm backlog).
pub async fn add_tags(db: &PgPool, job: uuid::Uuid, tags: &[Tag], source: &str) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    insert_tags(&mut tx, job, tags, source).await?;
    tx.commit().await
}

/// A track as the search index holds it, rebuilt from the catalog.
pub struct StoredTrack {
    pub owner: uuid::Uuid,
    pub title: String,
    pub artist: Option<String>,
    pub album: Option<String>,
    pub tags: Vec<String>,
}

/// A track as the index holds it, with its tags by weight; callers add the WHERE.
const TRACK_DOCS: &str = "SELECT t.job_id, t.owner_id, t.title, ar.name, al.title,
        COALESCE(ARRAY(SELECT g.name FROM catalog.track_tags tt JOIN catalog.tags g ON g.id = tt.tag_id
                       WHERE tt.job_id = t.job_id ORDER BY tt.weight DESC), '{}')
 FROM catalog.tracks t
 LEFT JOIN catalog.artists ar ON ar.id = t.artist_id
 LEFT JOIN catalog.albums al ON al.id = t.album_id";

type StoredTrackRow = (uuid::Uuid, uuid::Uuid, String, Option<String>, Option<String>, Vec<String>);

fn stored((job, owner, title, artist, album, tags): StoredTrackRow) -> (uuid::Uuid, StoredTrack) {
    (job, StoredTrack { owner, title, artist, album, tags })
}

pub async fn track_doc(db: &PgPool, job: uuid::Uuid) -> Result<Option<StoredTrack>, sqlx::Error> {
    let sql = sqlx::AssertSqlSafe(format!("{TRACK_DOCS} WHERE t.job_id = $1"));
    let row: Option<StoredTrackRow> = sqlx::query_as(sql).bind(job).fetch_optional(db).await?;
    Ok(row.map(|r| stored(r).1))
}

/// Every track as the search index holds it (the rebuild path).
pub async fn all_track_docs(db: &PgPool) -> Result<Vec<(uuid::Uuid, StoredTrack)>, sqlx::Error> {
    let rows: Vec<StoredTrackRow> = sqlx::query_as(TRACK_DOCS).fetch_all(db).await?;
    Ok(rows.into_iter().map(stored).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn name_keys_fold_case_and_whitespace() {
        assert_eq!(super::name_key("  The   Beatles "), "the beatles");
        assert_eq!(super::name_key("Beyoncé"), super::name_key("BEYONCE"));
    }
}
