//! Listings: `/v2/_catalog`, `/v2/NAME/tags/list` (both paginated with
//! `n` and `last`, the next page named by a `Link: <...>; rel="next"`
//! header) and `/v2/NAME/referrers/DIGEST`.

use std::collections::{BTreeSet, HashMap};

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use haul_oci::media_type;

use crate::api::{blocking, Shared};
use crate::blobs::parse_digest;
use crate::error::{ApiError, ErrorCode};
use crate::names::served_name;

/// One page of a sorted listing.
#[derive(Debug, PartialEq, Eq)]
struct Page {
    items: Vec<String>,
    /// The `last` of the next page, when items remain after this one.
    next_last: Option<String>,
}

/// The items after `last` (all when `None`), at most `n` of them.
fn paginate(sorted: &BTreeSet<String>, n: Option<usize>, last: Option<&str>) -> Page {
    let after = sorted
        .iter()
        .filter(|item| last.is_none_or(|last| item.as_str() > last));
    match n {
        None => Page {
            items: after.cloned().collect(),
            next_last: None,
        },
        Some(n) => {
            let mut rest = after.peekable();
            let items: Vec<String> = rest.by_ref().take(n).cloned().collect();
            let more = rest.peek().is_some();
            Page {
                next_last: (more && n > 0).then(|| items.last().cloned()).flatten(),
                items,
            }
        }
    }
}

/// `n` and `last` of a query; `PAGINATION_NUMBER_INVALID` for an `n`
/// that is not a number.
fn page_query(query: &HashMap<String, String>) -> Result<(Option<usize>, Option<&str>), ApiError> {
    let n = match query.get("n") {
        None => None,
        Some(text) => Some(text.parse::<usize>().map_err(|_| {
            ApiError::new(
                ErrorCode::PaginationNumberInvalid,
                "invalid number of results requested",
            )
            .with_detail(serde_json::json!({ "n": text }))
        })?),
    };
    Ok((n, query.get("last").map(String::as_str)))
}

fn json_response(body: serde_json::Value, content_type: &'static str) -> Response {
    let mut response = (StatusCode::OK, body.to_string()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn add_link(response: &mut Response, path: &str, n: Option<usize>, next_last: Option<String>) {
    let (Some(n), Some(last)) = (n, next_last) else {
        return;
    };
    let link = format!("<{path}?n={n}&last={last}>; rel=\"next\"");
    if let Ok(value) = HeaderValue::from_str(&link) {
        response.headers_mut().insert(header::LINK, value);
    }
}

/// `GET /v2/_catalog`: every repository by its registry-relative name.
pub(crate) async fn catalog(
    state: &Shared,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let (n, last) = page_query(query)?;
    let names = blocking(state, |app| {
        Ok(app
            .view
            .repositories()?
            .keys()
            .map(|full| served_name(full).to_owned())
            .collect::<BTreeSet<String>>())
    })
    .await?;
    let page = paginate(&names, n, last);
    let mut response = json_response(
        serde_json::json!({ "repositories": page.items }),
        "application/json",
    );
    add_link(&mut response, "/v2/_catalog", n, page.next_last);
    Ok(response)
}

/// `GET /v2/NAME/tags/list`.
pub(crate) async fn tags(
    state: &Shared,
    name: &str,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let (n, last) = page_query(query)?;
    let ns = query.get("ns").cloned();
    let asked = name.to_owned();
    let (_full, tags) = blocking(state, move |app| app.repository(&asked, ns.as_deref())).await?;
    let page = paginate(&tags, n, last);
    let mut response = json_response(
        serde_json::json!({ "name": name, "tags": page.items }),
        "application/json",
    );
    add_link(
        &mut response,
        &format!("/v2/{name}/tags/list"),
        n,
        page.next_last,
    );
    Ok(response)
}

/// `GET /v2/NAME/referrers/DIGEST[?artifactType=T]`: an index of the
/// stored manifests whose `subject` is `DIGEST` (empty when none).
pub(crate) async fn referrers(
    state: &Shared,
    name: &str,
    digest: &str,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let digest = parse_digest(digest)?;
    let ns = query.get("ns").cloned();
    let asked = name.to_owned();
    let mut found = blocking(state, move |app| {
        app.repository(&asked, ns.as_deref())?;
        Ok(app.view.referrers(&digest)?)
    })
    .await?;
    let filter = query.get("artifactType");
    if let Some(wanted) = filter {
        found.retain(|d| d["artifactType"].as_str() == Some(wanted.as_str()));
    }
    let mut response = json_response(
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_INDEX,
            "manifests": found,
        }),
        media_type::OCI_INDEX,
    );
    if filter.is_some() {
        response.headers_mut().insert(
            "oci-filters-applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pages_follow_last_and_n() {
        let all = set(&["a", "b", "c", "d", "e"]);
        let page = paginate(&all, Some(2), None);
        assert_eq!(page.items, ["a", "b"]);
        assert_eq!(page.next_last.as_deref(), Some("b"));
        let page = paginate(&all, Some(2), Some("b"));
        assert_eq!(page.items, ["c", "d"]);
        assert_eq!(page.next_last.as_deref(), Some("d"));
        let page = paginate(&all, Some(2), Some("d"));
        assert_eq!(page.items, ["e"]);
        assert_eq!(page.next_last, None);
        let page = paginate(&all, Some(5), None);
        assert_eq!(page.next_last, None, "an exact last page has no next");
        assert_eq!(paginate(&all, None, Some("c")).items, ["d", "e"]);
        assert_eq!(paginate(&all, Some(0), None).items, Vec::<String>::new());
        assert_eq!(paginate(&all, None, Some("zz")).items, Vec::<String>::new());
    }
}
