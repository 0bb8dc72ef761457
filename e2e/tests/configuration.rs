//! The README's configuration table and `k8s/settings.json` (which `k8s/check.py` reads) are
//! rendered from the settings each program declares; this fails on any difference.
//! `TUNEWIRE_WRITE_SETTINGS=1 cargo test -p tunewire-e2e --test configuration` writes them.

use std::path::PathBuf;

use tunewire_service_runtime::config::{Reference, Setting};

const BEGIN: &str = "<!-- settings: rendered from the code by e2e/tests/configuration.rs -->\n";
const END: &str = "<!-- settings end -->";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn programs() -> [(&'static str, &'static [Setting]); 7] {
    [
        ("gateway", tunewire_gateway::config::SETTINGS),
        ("auth", tunewire_auth::config::SETTINGS),
        ("converter", tunewire_converter::config::SETTINGS),
        ("notifier", tunewire_notifier::config::SETTINGS),
        ("catalog-indexer", tunewire_catalog_indexer::config::SETTINGS),
        ("setup", tunewire_setup::settings::SETTINGS),
        ("all", tunewire_service_runtime::telemetry::SETTINGS),
    ]
}

#[test]
fn the_readme_table_and_k8s_settings_are_the_code_s() -> anyhow::Result<()> {
    let programs = programs();
    let reference = Reference::new(&programs).map_err(anyhow::Error::msg)?;
    let write = std::env::var_os("TUNEWIRE_WRITE_SETTINGS").is_some();

    let readme_path = root().join("README.md");
    let readme = std::fs::read_to_string(&readme_path)?;
    let start = readme.find(BEGIN).ok_or_else(|| anyhow::anyhow!("README.md has no {BEGIN:?}"))? + BEGIN.len();
    let end = start + readme[start..].find(END).ok_or_else(|| anyhow::anyhow!("README.md has no {END:?}"))?;
    let table = reference.markdown();

    let json_path = root().join("k8s/settings.json");
    let json = format!("{}\n", serde_json::to_string_pretty(&reference.json())?);

    if write {
        std::fs::write(&readme_path, format!("{}{table}{}", &readme[..start], &readme[end..]))?;
        std::fs::write(&json_path, &json)?;
        return Ok(());
    }
    let hint = "run `TUNEWIRE_WRITE_SETTINGS=1 cargo test -p tunewire-e2e --test configuration`";
    assert_eq!(readme[start..end], table, "README.md's configuration table is not the code's: {hint}");
    let on_disk = std::fs::read_to_string(&json_path).unwrap_or_default();
    assert_eq!(on_disk, json, "k8s/settings.json is not the code's: {hint}");
    Ok(())
}
