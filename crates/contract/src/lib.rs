//! What Tunewire's services agree on, with no I/O: the ids they share, the events they
//! exchange (versioned by routing key), the claims of an access token, and the bodies of
//! the account calls, of a job and of a search answer. The broker transport that carries the events is `tunewire-events`.

pub mod accounts;
pub mod events;
pub mod ids;
pub mod jobs;
pub mod search;
pub mod tokens;

pub use accounts::{Account, Credentials, PasswordChange, Token, TokenType};
pub use events::{
    AudioOutput, CatalogChange, Event, JobConverted, JobFailed, JobUpdate, MediaCatalogued, MediaConverted,
    MediaDeleted, MediaExpired, MediaFailed, MediaProgress, MediaUploaded, Message, Outcome, Owner, Preset,
    SourceFacts, SourceFile, TrackTags,
};
pub use ids::{Email, FileId, IdError, JobId, UserId};
pub use search::{SearchHit, SearchPage};
pub use tokens::{AccessClaims, Role, UnknownRole};
