//! The media store's collections and indexes, and one MongoDB user per service that touches
//! it, holding one role with only the privileges `tunewire_media_store::access` lists: the
//! gateway cannot write MP3s, the converter cannot change originals, neither can change a
//! database's shape, and nobody else has a login.

use mongodb::bson::{Document, doc};
use mongodb::{Client, Database};
use tunewire_media_store::access::Account;
use tunewire_media_store::{MediaStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum MediaStoreSetupError {
    #[error("mongodb: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("preparing the media store: {0}")]
    Prepare(#[from] StoreError),
}

/// Makes the media store's collections and indexes, then creates or updates each account's
/// role and user (with its password) in the `admin` database; `prefix` names the media
/// store's databases as the services' own setting does.
pub async fn apply(admin_uri: &str, prefix: &str, accounts: &[(Account, String)]) -> Result<(), MediaStoreSetupError> {
    MediaStore::connect(admin_uri, prefix).await?.prepare().await?;
    let admin = admin_database(admin_uri).await?;
    for (account, password) in accounts {
        let name = account.user(prefix);
        let privileges = account.privileges(prefix);
        let role = doc! {"privileges": privileges, "roles": []};
        if exists(&admin, "rolesInfo", &name, "roles").await? {
            admin.run_command(with_command("updateRole", &name, role)).await?;
        } else {
            admin.run_command(with_command("createRole", &name, role)).await?;
        }
        let user = doc! {"pwd": password.as_str(), "roles": [{"role": name.as_str(), "db": "admin"}]};
        if exists(&admin, "usersInfo", &name, "users").await? {
            admin.run_command(with_command("updateUser", &name, user)).await?;
        } else {
            admin.run_command(with_command("createUser", &name, user)).await?;
        }
    }
    Ok(())
}

/// Drops the accounts' users and roles (the tests' sandboxes, when they end).
pub async fn remove(admin_uri: &str, prefix: &str, accounts: &[Account]) -> Result<(), MediaStoreSetupError> {
    let admin = admin_database(admin_uri).await?;
    for account in accounts {
        let name = account.user(prefix);
        if exists(&admin, "usersInfo", &name, "users").await? {
            admin.run_command(doc! {"dropUser": name.as_str()}).await?;
        }
        if exists(&admin, "rolesInfo", &name, "roles").await? {
            admin.run_command(doc! {"dropRole": name.as_str()}).await?;
        }
    }
    Ok(())
}

async fn admin_database(uri: &str) -> Result<Database, MediaStoreSetupError> {
    Ok(Client::with_uri_str(uri).await?.database("admin"))
}

/// `{command: name, ..body}`: the command's name must come first.
fn with_command(command: &str, name: &str, body: Document) -> Document {
    let mut full = doc! {command: name};
    full.extend(body);
    full
}

async fn exists(admin: &Database, command: &str, name: &str, key: &str) -> Result<bool, MediaStoreSetupError> {
    let found = admin.run_command(doc! {command: name}).await?;
    Ok(found.get_array(key).is_ok_and(|list| !list.is_empty()))
}
