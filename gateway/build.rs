//! Builds the web app (`../web`, esbuild through Node) into `OUT_DIR` and writes
//! `web_assets.rs`, which `web.rs` includes: every file the app serves, with its compressed
//! forms, embedded in the binary so the gateway needs no second server and no files beside it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let crate_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let web = crate_dir.join("../web");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for input in ["src", "index.html", "build.mjs", "package.json", "package-lock.json"] {
        println!("cargo::rerun-if-changed=../web/{input}");
    }
    let modules = install(&web, &out.join("web-npm"));
    let dist = out.join("web");
    let _ = std::fs::remove_dir_all(&dist);
    run(Command::new("node").arg(web.join("build.mjs")).arg("--modules").arg(&modules).arg("--out").arg(&dist));
    let manifest = std::fs::read_to_string(dist.join("manifest.json")).expect("web/build.mjs writes manifest.json");
    let manifest: serde_json::Value = serde_json::from_str(&manifest).expect("manifest.json is JSON");
    let mut code = String::from("pub static ASSETS: &[Asset] = &[\n");
    for entry in manifest.as_array().expect("manifest.json is an array") {
        let field = |name: &str| entry[name].as_str().unwrap_or_else(|| panic!("manifest entry without {name}"));
        let file = dist.join(field("file"));
        let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let variant = |suffix: &str| {
            let path = PathBuf::from(format!("{}.{suffix}", file.display()));
            if path.exists() { format!("Some(include_bytes!({path:?}))") } else { "None".to_owned() }
        };
        let _ = writeln!(
            code,
            "    Asset {{ path: {:?}, content_type: {:?}, immutable: {}, etag: \"\\\"{:016x}\\\"\", identity: include_bytes!({:?}), br: {}, gzip: {} }},",
            field("path"),
            field("type"),
            entry["immutable"].as_bool().unwrap_or(false),
            fnv1a(&bytes),
            file,
            variant("br"),
            variant("gz"),
        );
    }
    code.push_str("];\n");
    std::fs::write(out.join("web_assets.rs"), code).expect("OUT_DIR is writable");
}

/// `npm ci` of the app's lock file into `dir`, once per lock file.
fn install(web: &Path, dir: &Path) -> PathBuf {
    let lock = std::fs::read(web.join("package-lock.json")).expect("web/package-lock.json");
    let stamp = dir.join(".installed-lock.json");
    if std::fs::read(&stamp).ok().as_deref() != Some(lock.as_slice()) {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).expect("OUT_DIR is writable");
        for file in ["package.json", "package-lock.json"] {
            std::fs::copy(web.join(file), dir.join(file)).expect("copy the web app's package files");
        }
        run(Command::new("npm").args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]).current_dir(dir));
        std::fs::write(&stamp, &lock).expect("OUT_DIR is writable");
    }
    dir.join("node_modules")
}

fn run(command: &mut Command) {
    let status = command.status().unwrap_or_else(|e| {
        panic!("the web app is built with Node.js 18+ and npm ({command:?}: {e}); scripts/stack tools installs them")
    });
    assert!(status.success(), "{command:?} failed: {status}");
}

/// A strong validator for each file's `ETag`.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
