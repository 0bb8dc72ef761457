//! What each service may do in the media store: one MongoDB role per service, its privileges
//! given per database (MongoDB-wire servers such as SecantusDB check privileges per database,
//! not per collection; hence a database per kind of data). `tunewire-setup` applies them.
//! Nobody but the setup may create an index: one can remove documents (TTL) or refuse writes
//! (unique).

use mongodb::bson::{Document, doc};

use crate::Bucket;

/// A service that holds a login to the media store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Account {
    Gateway,
    Converter,
}

pub const ACCOUNTS: [Account; 2] = [Account::Gateway, Account::Converter];

/// Reading: queries and their cursors (mongod lets anyone end their own cursors; SecantusDB
/// asks for the action).
const READ: [&str; 2] = ["find", "killCursors"];

impl Account {
    /// The service's name, as in its settings (`GATEWAY_MONGODB_PASSWORD`).
    pub fn service(self) -> &'static str {
        match self {
            Account::Gateway => "gateway",
            Account::Converter => "converter",
        }
    }

    /// Its user and role, both in the `admin` database; `prefix` as the databases'.
    pub fn user(self, prefix: &str) -> String {
        format!("{prefix}-{}", self.service())
    }

    /// The role's privileges, as `createRole` takes them.
    pub fn privileges(self, prefix: &str) -> Vec<Document> {
        let on = |database: String, more: &[&str]| {
            let actions: Vec<&str> = READ.iter().chain(more).copied().collect();
            doc! {"resource": {"db": database, "collection": ""}, "actions": actions}
        };
        match self {
            Account::Gateway => vec![
                // Stores uploads, removes refused and expired ones. The driver's GridFS upload
                // stream, on an empty bucket, creates the collections (they exist: it is told
                // so) and looks for its indexes (found, so it creates none).
                on(Bucket::Uploads.database(prefix), &["insert", "remove", "createCollection", "listIndexes"]),
                // Serves MP3s, removes them with their job and with retention; never writes one.
                on(Bucket::Audio.database(prefix), &["remove"]),
                // Which file is a converted job's MP3.
                on(Bucket::Audio.outputs_database(prefix), &[]),
            ],
            Account::Converter => vec![
                // Reads the originals, never changes them.
                on(Bucket::Uploads.database(prefix), &[]),
                // Writes MP3s chunk by chunk; removes broken, stale and deleted jobs' ones.
                on(Bucket::Audio.database(prefix), &["insert", "remove"]),
                // Its attempts' heartbeats, the claimed outputs, the deleted jobs (upserts).
                on(Bucket::Audio.outputs_database(prefix), &["insert", "update", "remove"]),
            ],
        }
    }
}
