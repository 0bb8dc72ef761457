//! The search index (tantivy): derived from the catalog, written by this process only.
//! Accent- and case-insensitive, fuzzy per term; title weighs most, then artist, album, tags.

use std::path::Path;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use tantivy::collector::{Count, TopDocs};
use tantivy::query::{AllQuery, BooleanQuery, BoostQuery, FuzzyTermQuery, Occur, Query, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions, Value};
use tantivy::tokenizer::{AsciiFoldingFilter, LowerCaser, SimpleTokenizer, TextAnalyzer};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};
use tunewire_contract::SearchHit;

const TOKENIZER: &str = "folded";

#[derive(Clone, Copy)]
struct Fields {
    job_id: Field,
    owner: Field,
    title: Field,
    artist: Field,
    album: Field,
    tags: Field,
    /// Each tag whole and lower-cased, for exact filtering.
    tag: Field,
}

/// What a search asks for; `text` may be empty when a filter is given.
pub struct SearchRequest<'a> {
    pub text: &'a str,
    pub owner: Option<&'a str>,
    pub tag: Option<&'a str>,
    pub artist: Option<&'a str>,
    pub limit: usize,
    pub offset: usize,
}

pub struct SearchIndex {
    index: Index,
    reader: IndexReader,
    writer: Mutex<IndexWriter>,
    fields: Fields,
    commits: Mutex<Commits>,
    committed: Condvar,
}

/// Group commit: documents are added as they come and committed together, when
/// `COMMIT_EVERY` are waiting or the oldest has waited `COMMIT_AFTER`, whichever first. Each
/// caller returns once a commit covers its document, so "indexed" means "searchable".
#[derive(Default)]
struct Commits {
    added: u64,
    committed: u64,
    committing: bool,
    oldest_pending: Option<Instant>,
}

fn poisoned<T>(_: T) -> tantivy::TantivyError {
    tantivy::TantivyError::Poisoned
}

const COMMIT_EVERY: u64 = 100;
const COMMIT_AFTER: Duration = Duration::from_millis(250);

pub struct TrackDoc<'a> {
    pub job_id: String,
    pub owner: String,
    pub title: &'a str,
    pub artist: Option<&'a str>,
    pub album: Option<&'a str>,
    pub tags: Vec<String>,
}

fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default()).filter(LowerCaser).filter(AsciiFoldingFilter).build()
}

impl SearchIndex {
    pub fn open(dir: &Path) -> tantivy::Result<Self> {
        let mut builder = Schema::builder();
        let text = TextOptions::default()
            .set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer(TOKENIZER)
                    .set_index_option(IndexRecordOption::WithFreqsAndPositions),
            )
            .set_stored();
        let fields = Fields {
            job_id: builder.add_text_field("job_id", STRING | STORED),
            owner: builder.add_text_field("owner", STRING),
            title: builder.add_text_field("title", text.clone()),
            artist: builder.add_text_field("artist", text.clone()),
            album: builder.add_text_field("album", text.clone()),
            tags: builder.add_text_field("tags", text),
            tag: builder.add_text_field("tag", STRING),
        };
        std::fs::create_dir_all(dir)?;
        let directory = tantivy::directory::MmapDirectory::open(dir)?;
        let index = Index::open_or_create(directory, builder.build())?;
        index.tokenizers().register(TOKENIZER, analyzer());
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        let writer = index.writer(30_000_000)?;
        Ok(Self {
            index,
            reader,
            writer: Mutex::new(writer),
            fields,
            commits: Mutex::new(Commits::default()),
            committed: Condvar::new(),
        })
    }

    /// Replaces the track's document; returns once it is searchable (see `Commits`).
    /// Blocking: call from a blocking thread.
    pub fn upsert(&self, track: &TrackDoc<'_>) -> tantivy::Result<()> {
        let doc = self.document(track);
        self.change(&track.job_id, Some(doc))
    }

    /// Removes the track's document; returns once searches no longer find it. Blocking.
    pub fn remove(&self, job_id: &str) -> tantivy::Result<()> {
        self.change(job_id, None)
    }

    /// Replaces (or, with no document, removes) a job's document, through the group commit.
    fn change(&self, job_id: &str, doc: Option<TantivyDocument>) -> tantivy::Result<()> {
        let mut commits = self.commits.lock().map_err(poisoned)?;
        {
            let writer = self.writer.lock().map_err(poisoned)?;
            writer.delete_term(Term::from_field_text(self.fields.job_id, job_id));
            if let Some(doc) = doc {
                writer.add_document(doc)?;
            }
        }
        commits.added += 1;
        commits.oldest_pending.get_or_insert_with(Instant::now);
        let mine = commits.added;
        loop {
            if commits.committed >= mine {
                return Ok(());
            }
            let waited = commits.oldest_pending.map_or(Duration::ZERO, |at| at.elapsed());
            let due = commits.added - commits.committed >= COMMIT_EVERY || waited >= COMMIT_AFTER;
            if commits.committing || !due {
                let wait = if commits.committing { COMMIT_AFTER } else { COMMIT_AFTER.saturating_sub(waited) };
                commits = self.committed.wait_timeout(commits, wait).map_err(poisoned)?.0;
                continue;
            }
            commits.committing = true;
            let target = commits.added;
            drop(commits);
            let outcome =
                self.writer.lock().map_err(poisoned).and_then(|mut w| w.commit()).and_then(|_| self.reader.reload());
            commits = self.commits.lock().map_err(poisoned)?;
            commits.committing = false;
            if outcome.is_ok() {
                commits.committed = target;
                commits.oldest_pending = (commits.added > target).then(Instant::now);
            }
            self.committed.notify_all();
            outcome?;
        }
    }

    fn document(&self, track: &TrackDoc<'_>) -> TantivyDocument {
        let f = self.fields;
        let mut doc = TantivyDocument::default();
        doc.add_text(f.job_id, &track.job_id);
        doc.add_text(f.owner, &track.owner);
        doc.add_text(f.title, track.title);
        if let Some(artist) = track.artist {
            doc.add_text(f.artist, artist);
        }
        if let Some(album) = track.album {
            doc.add_text(f.album, album);
        }
        for tag in &track.tags {
            doc.add_text(f.tags, tag);
            doc.add_text(f.tag, tag.to_lowercase());
        }
        doc
    }

    fn tokens(&self, text: &str) -> Vec<String> {
        let mut tokens = Vec::new();
        let mut analyzer = self.index.tokenizers().get(TOKENIZER).unwrap_or_else(analyzer);
        let mut stream = analyzer.token_stream(text);
        stream.process(&mut |t| tokens.push(t.text.clone()));
        tokens
    }

    /// Hits best first, and how many match in all.
    pub fn search(&self, request: &SearchRequest<'_>) -> tantivy::Result<(Vec<SearchHit>, usize)> {
        let f = self.fields;
        let tokens = self.tokens(request.text);
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for token in tokens.iter().take(8) {
            // One typo for short words, two for long ones.
            let distance = if token.chars().count() <= 4 { 1 } else { 2 };
            let per_field: Vec<(Occur, Box<dyn Query>)> =
                [(f.title, 4.0), (f.artist, 3.0), (f.album, 2.0), (f.tags, 1.0)]
                    .into_iter()
                    .map(|(field, boost)| {
                        let fuzzy = FuzzyTermQuery::new(Term::from_field_text(field, token), distance, true);
                        (Occur::Should, Box::new(BoostQuery::new(Box::new(fuzzy), boost)) as Box<dyn Query>)
                    })
                    .collect();
            clauses.push((Occur::Must, Box::new(BooleanQuery::new(per_field))));
        }
        let exact = |field, value: &str| -> (Occur, Box<dyn Query>) {
            (Occur::Must, Box::new(TermQuery::new(Term::from_field_text(field, value), IndexRecordOption::Basic)))
        };
        if let Some(owner) = request.owner {
            clauses.push(exact(f.owner, owner));
        }
        if let Some(tag) = request.tag {
            clauses.push(exact(f.tag, &tag.trim().to_lowercase()));
        }
        // The artist filter forgives case and accents, not typos: every word must be there.
        for token in request.artist.map(|a| self.tokens(a)).unwrap_or_default() {
            clauses.push((
                Occur::Must,
                Box::new(TermQuery::new(Term::from_field_text(f.artist, &token), IndexRecordOption::Basic)),
            ));
        }
        if tokens.is_empty() {
            clauses.push((Occur::Must, Box::new(AllQuery)));
        }
        let query = BooleanQuery::new(clauses);
        let searcher = self.reader.searcher();
        let collector = (TopDocs::with_limit(request.limit).and_offset(request.offset).order_by_score(), Count);
        let (top, total) = searcher.search(&query, &collector)?;
        let mut hits = Vec::with_capacity(top.len());
        for (score, address) in top {
            let doc: TantivyDocument = searcher.doc(address)?;
            let text = |field| doc.get_first(field).and_then(|v| v.as_str()).map(str::to_string);
            hits.push(SearchHit {
                job_id: text(f.job_id).unwrap_or_default(),
                title: text(f.title).unwrap_or_default(),
                artist: text(f.artist),
                album: text(f.album),
                tags: doc.get_all(f.tags).filter_map(|v| v.as_str().map(str::to_string)).collect(),
                score,
            });
        }
        Ok((hits, total))
    }

    /// Empties the index and writes `tracks` into it, committing once (the `reindex` path).
    pub fn rebuild(&self, tracks: &[TrackDoc<'_>]) -> tantivy::Result<()> {
        let mut writer = self.writer.lock().map_err(|_| tantivy::TantivyError::Poisoned)?;
        writer.delete_all_documents()?;
        for track in tracks {
            writer.add_document(self.document(track))?;
        }
        writer.commit()?;
        drop(writer);
        self.reader.reload()
    }

    /// Whether the index can be searched: a searcher can be taken and its segments read.
    pub fn check(&self) -> Result<(), String> {
        let searcher = self.reader.searcher();
        searcher.segment_readers().iter().try_for_each(|s| s.get_store_reader(0).map(|_| ())).map_err(|e| e.to_string())
    }

    pub fn is_empty(&self) -> bool {
        self.reader.searcher().num_docs() == 0
    }
}
