//! Conventions every operation of the OpenAPI document shares, applied once to
//! the generated document instead of repeated on each handler, so the document
//! says what the router and the parameter parser really do:
//!
//! * a route taking GET and POST reads the query string on GET and the body on
//!   POST; the document gives GET its query parameters and POST its body (not
//!   both, which no request could satisfy: a parameter given twice is a 400);
//! * every route behind a token may answer 401 and 403 (the route table's
//!   access level decides which routes are), every route with parameters 400,
//!   every route with a body 413 and 415, every route reading the database 503,
//!   all with the project's error body.

use std::collections::HashMap;

use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr, ResponseBuilder};

use crate::auth::Access;

pub struct Conventions;

/// Routes that never touch the database.
const NO_DATABASE: &[&str] = &["/healthz", "/openapi.json"];

fn error(description: &str) -> RefOr<utoipa::openapi::Response> {
    let body = Content::new(Some(Ref::from_schema_name("ErrorBody")));
    RefOr::T(ResponseBuilder::new().description(description).content("application/json", body).build())
}

fn add(op: &mut Operation, status: &str, description: &str) {
    op.responses.responses.entry(status.to_owned()).or_insert_with(|| error(description));
}

fn apply(op: &mut Operation, path: &str, access: Option<Access>, post: bool) {
    if post && op.request_body.is_some() {
        // POST takes its parameters in the body.
        if let Some(params) = op.parameters.as_mut() {
            params.retain(|p| p.parameter_in != ParameterIn::Query);
        }
    }
    if !post {
        op.request_body = None;
    }
    if op.parameters.as_ref().is_some_and(|p| p.is_empty()) {
        op.parameters = None;
    }
    if access.is_some_and(|a| a != Access::Public) {
        add(op, "401", "No token, or a bad, expired or revoked one");
        add(op, "403", "The token's role may not call this route");
    }
    if op.parameters.is_some() || op.request_body.is_some() {
        add(op, "400", "A parameter is missing, malformed or given twice");
    }
    if op.request_body.is_some() {
        add(op, "413", "The body is larger than the limit");
        add(op, "415", "The body is neither JSON nor a form");
    }
    if !NO_DATABASE.contains(&path) {
        add(op, "503", "The database is unreachable; try again");
    }
}

impl utoipa::Modify for Conventions {
    fn modify(&self, openapi: &mut OpenApi) {
        let access: HashMap<&str, Access> = crate::routes().iter().map(|r| (r.path, r.access)).collect();
        for (path, item) in openapi.paths.paths.iter_mut() {
            let a = access.get(path.as_str()).copied();
            if let Some(op) = item.get.as_mut() {
                apply(op, path, a, false);
            }
            if let Some(op) = item.post.as_mut() {
                apply(op, path, a, true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use utoipa::OpenApi;

    #[test]
    fn get_takes_the_query_and_post_the_body_and_guarded_routes_document_401() {
        let doc = serde_json::to_value(crate::ApiDoc::openapi()).expect("document");
        let start = &doc["paths"]["/start-runner"];
        assert!(start["get"]["requestBody"].is_null(), "{}", start["get"]);
        assert!(start["get"]["parameters"].as_array().is_some_and(|p| !p.is_empty()));
        assert!(start["post"]["parameters"].is_null(), "{}", start["post"]);
        assert!(start["post"]["requestBody"].is_object());
        for status in ["400", "401", "403", "503"] {
            assert!(start["get"]["responses"][status].is_object(), "{status}");
        }
        assert!(doc["paths"]["/healthz"]["get"]["responses"]["401"].is_null());
        assert!(doc["paths"]["/healthz"]["get"]["responses"]["503"].is_null());
    }

    #[test]
    fn the_served_document_has_the_configured_page_size() {
        let mut doc = crate::ApiDoc::openapi();
        let settings = geonex_shared::config::ApiSettings { default_page_size: 20, max_page_size: 50, ..Default::default() };
        crate::params::document_page_size(&mut doc, &settings);
        let doc = serde_json::to_value(doc).expect("document");
        let limit = &doc["components"]["schemas"]["PageLimit"];
        assert_eq!((limit["minimum"].as_i64(), limit["maximum"].as_i64(), limit["default"].as_i64()), (Some(1), Some(50), Some(20)), "{limit}");
        let params = doc["paths"]["/describe-runners"]["get"]["parameters"].as_array().expect("parameters");
        let limit = params.iter().find(|p| p["name"] == "limit").expect("a limit parameter");
        assert_eq!(limit["schema"]["$ref"], "#/components/schemas/PageLimit", "{limit}");
    }

    /// Every `$ref` in `value`.
    fn refs<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match value {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(r)) = m.get("$ref") {
                    out.push(r);
                }
                m.values().for_each(|v| refs(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_schema_the_document_refers_to_is_in_it() {
        let doc = serde_json::to_value(crate::ApiDoc::openapi()).expect("document");
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(found.contains(&"#/components/schemas/InstanceType"), "parameters refer to their types' schemas");
        let mut dangling: Vec<&str> = found
            .into_iter()
            .filter(|r| r.strip_prefix("#/components/schemas/").is_none_or(|name| !doc["components"]["schemas"][name].is_object()))
            .collect();
        dangling.sort_unstable();
        dangling.dedup();
        assert!(dangling.is_empty(), "not in the document: {dangling:?}");
    }
}
