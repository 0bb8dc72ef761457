//! The web app at `/`: files built from `web/` by `build.rs` and embedded in the binary,
//! served with their compressed forms, validators and a strict Content-Security-Policy (no
//! inline script or style, nothing from elsewhere, no framing). Every page of the app is
//! `index.html`, which routes itself.

use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, StatusCode, header};
use warp::{Filter, Rejection, Reply};

type Response = warp::reply::Response;

/// One file of the built app.
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    /// Its name carries its hash: cached for good.
    pub immutable: bool,
    pub etag: &'static str,
    pub identity: &'static [u8],
    pub br: Option<&'static [u8]>,
    pub gzip: Option<&'static [u8]>,
}

include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; media-src 'self'; connect-src 'self'; font-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The app's own routes (the first segment; `d` is the emailed link's page,
/// `tunewire_signed_links::page_path`).
const PAGES: &[&str] = &["", "sign-in", "sign-up", "search", "admin", "d"];

fn index() -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == "/")
}

fn asset(path: &str) -> Option<&'static Asset> {
    if let Some(found) = ASSETS.iter().find(|a| a.path == path) {
        return Some(found);
    }
    let mut segments = path.trim_start_matches('/').split('/');
    let first = segments.next().unwrap_or_default();
    let page = match (first, segments.next(), segments.next()) {
        ("d", Some(token), None | Some("")) => !token.is_empty(),
        ("d", _, _) => false,
        (first, None, None) | (first, Some(""), None) => PAGES.contains(&first),
        _ => false,
    };
    page.then(index).flatten()
}

/// A browser asking for a page the app does not have gets the app with a 404, which says so
/// in its own words; the API's paths and programs get the JSON 404.
fn not_found_page(path: &str, accept: Option<&str>) -> Option<&'static Asset> {
    let api = path.starts_with("/v1/") || path.starts_with("/assets/");
    let browser = accept.is_some_and(|accept| accept.contains("text/html"));
    (browser && !api).then(index).flatten()
}

/// Whether `accept-encoding` accepts `coding` (a `q=0` refuses it).
fn accepts(accept_encoding: Option<&str>, coding: &str) -> bool {
    accept_encoding.unwrap_or_default().split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        let name = parts.next().unwrap_or_default();
        let refused = parts.any(|p| p.strip_prefix("q=").is_some_and(|q| q.parse::<f32>().is_ok_and(|q| q == 0.0)));
        name.eq_ignore_ascii_case(coding) && !refused
    })
}

fn respond(asset: &Asset, head: bool, accept_encoding: Option<&str>, if_none_match: Option<&str>) -> Response {
    let (encoding, body) = match (asset.br, asset.gzip) {
        (Some(br), _) if accepts(accept_encoding, "br") => (Some("br"), br),
        (_, Some(gzip)) if accepts(accept_encoding, "gzip") => (Some("gzip"), gzip),
        _ => (None, asset.identity),
    };
    // Each encoding is its own representation, so its own validator (RFC 9110 8.8.3).
    let etag = match encoding {
        Some(coding) => format!("{}-{coding}\"", asset.etag.trim_end_matches('"')),
        None => asset.etag.to_owned(),
    };
    let not_modified = crate::download::none_match(if_none_match, &etag);
    let empty: &'static [u8] = &[];
    let mut response = if not_modified || head { empty.into_response() } else { body.into_response() };
    if not_modified {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
    }
    let headers = response.headers_mut();
    let cache = if asset.immutable { "public, max-age=31536000, immutable" } else { "no-cache" };
    for (name, value) in [
        (header::CONTENT_TYPE, asset.content_type),
        (header::CACHE_CONTROL, cache),
        (header::VARY, "accept-encoding"),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // The link page's address holds its token.
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    if let Some(encoding) = encoding {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
    }
    if head && !not_modified {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    response
}

/// `GET`/`HEAD` of the app's files and pages; anything else is not found here.
pub fn routes() -> BoxedFilter<(Response,)> {
    crate::routes::get_or_head()
        .and(warp::path::full())
        .and(warp::header::optional::<String>("accept-encoding"))
        .and(warp::header::optional::<String>("if-none-match"))
        .and(warp::header::optional::<String>("accept"))
        .and_then(
            |head: bool,
             path: warp::path::FullPath,
             encodings: Option<String>,
             none_match: Option<String>,
             accept: Option<String>| async move {
                if let Some(asset) = asset(path.as_str()) {
                    return Ok(respond(asset, head, encodings.as_deref(), none_match.as_deref()));
                }
                let page = not_found_page(path.as_str(), accept.as_deref()).ok_or_else(warp::reject::not_found)?;
                let mut response = respond(page, head, encodings.as_deref(), None);
                *response.status_mut() = StatusCode::NOT_FOUND;
                Ok::<_, Rejection>(response)
            },
        )
        .map(Reply::into_response)
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_s_pages_are_its_index_and_nothing_else_is() {
        let index = |path| asset(path).map(|a| a.path);
        for page in ["/", "/sign-in", "/sign-up/", "/search", "/admin", "/d/abc.def"] {
            assert_eq!(index(page), Some("/"), "{page}");
        }
        for other in ["/d", "/d/", "/d/a/b", "/v1/jobs", "/etc/passwd", "/search/x", "/assets/none.js"] {
            assert_eq!(index(other), None, "{other}");
        }
        assert!(ASSETS.iter().any(|a| a.path.starts_with("/assets/") && a.path.ends_with(".js") && a.immutable));
    }

    #[test]
    fn only_browsers_asking_for_pages_get_the_app_s_not_found_page() {
        let html = Some("text/html,application/xhtml+xml,*/*;q=0.8");
        assert!(not_found_page("/no/such/page", html).is_some());
        assert!(not_found_page("/no/such/page", Some("application/json")).is_none());
        assert!(not_found_page("/v1/nothing", html).is_none());
        assert!(not_found_page("/assets/gone-ABC.js", html).is_none());
    }

    #[test]
    fn encodings_follow_accept_encoding() {
        assert!(accepts(Some("gzip, deflate, br, zstd"), "br"));
        assert!(!accepts(Some("gzip, br;q=0"), "br"));
        assert!(accepts(Some("GZIP;q=0.5"), "gzip"));
        assert!(!accepts(None, "gzip"));
    }
}
