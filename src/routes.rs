//! Which route a request is, and so what it costs: method + path matching, exempt
//! paths, the default route. Rules match the normalised path ([`crate::path`]), so
//! every spelling of a resource has its price; the query and fragment never take part.
//! A rule for `GET` also matches `HEAD`: upstreams answer HEAD with the GET handler.

use std::fmt::Write as _;
use std::rc::Rc;

use crate::path;

/// How a path is matched. A prefix is a plain string prefix, as in Envoy's routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
        }
    }
}

/// A metered route: what a matching request costs, per meter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub name: String,
    method: Option<String>,
    path: Option<PathMatch>,
    /// Sorted by meter name, costs > 0.
    pub meters: Vec<(String, u64)>,
    /// `meters` as the JSON array of the consume request, built once here so the hot
    /// path only copies it.
    pub meters_json: String,
    /// Exact (a consume per request) or leased.
    pub mode: crate::config::Mode,
    /// Meters reserved before the upstream runs and settled from its answer.
    pub usage: Vec<crate::usage::UsageSpec>,
}

impl Route {
    /// Whether a reservation needs the request body (a JSON field).
    pub fn reserves_from_body(&self) -> bool {
        self.usage
            .iter()
            .any(|u| matches!(u.reserve, crate::usage::Reserve::Json { .. }))
    }
}

impl Route {
    /// `meters` must be validated: names of `[a-z0-9_]` (nothing to escape), costs > 0.
    pub fn new(
        name: String,
        method: Option<String>,
        path: Option<PathMatch>,
        meters: Vec<(String, u64)>,
    ) -> Self {
        let mut meters_json = String::from("[");
        for (i, (meter, cost)) in meters.iter().enumerate() {
            if i > 0 {
                meters_json.push(',');
            }
            // Writing to a String cannot fail.
            let _ = write!(meters_json, r#"{{"meter":"{meter}","cost":{cost}}}"#);
        }
        meters_json.push(']');
        Self {
            name,
            method,
            path,
            meters,
            meters_json,
            mode: crate::config::Mode::Exact,
            usage: Vec::new(),
        }
    }

    fn matches(&self, method: &mut LazyMethod<'_>, path: &str) -> bool {
        self.path.as_ref().is_none_or(|p| p.matches(path))
            && self.method.as_deref().is_none_or(|m| method.is(m))
    }
}

/// The request method, read only when a rule whose path matched constrains it (each
/// header read is a hostcall in the filter).
struct LazyMethod<'a> {
    read: &'a mut dyn FnMut() -> String,
    value: Option<String>,
}

impl LazyMethod<'_> {
    /// Whether a rule for `method` applies. HEAD is GET without the body: most upstreams
    /// (axum, Go's ServeMux, Express, Flask, Rails) run the GET handler for it, so it
    /// costs what GET costs, and is exempt where GET is.
    fn is(&mut self, method: &str) -> bool {
        let actual = self.value.get_or_insert_with(&mut *self.read);
        actual == method || (method == "GET" && actual == "HEAD")
    }
}

/// What the filter does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matched<'a> {
    /// Exempt, or no route matched and there is no default route: not metered.
    Unmetered,
    /// Shared so a request can keep its route cheaply until its usage event is built.
    Metered(&'a Rc<Route>),
}

/// Routes in configuration order; the first match wins.
#[derive(Debug, Clone)]
pub struct RequestMatcher {
    routes: Vec<Rc<Route>>,
    default_route: Option<Rc<Route>>,
    exempt: Vec<(Option<String>, Option<PathMatch>)>,
}

impl RequestMatcher {
    pub fn new(
        routes: Vec<Route>,
        default_route: Option<Route>,
        exempt: Vec<(Option<String>, Option<PathMatch>)>,
    ) -> Self {
        Self {
            routes: routes.into_iter().map(Rc::new).collect(),
            default_route: default_route.map(Rc::new),
            exempt,
        }
    }

    /// `path` is the raw `:path` header; it is normalised here.
    pub fn classify(&self, method: &str, path: &str) -> Matched<'_> {
        self.classify_lazy(&mut || method.to_owned(), path.as_bytes())
            .0
    }

    /// [`RequestMatcher::classify`], calling `method` only if a rule whose path matched
    /// constrains the method. Also hands back the method if it was read. `path` is the
    /// raw `:path`, as bytes: it may hold anything a client sent.
    pub fn classify_lazy(
        &self,
        method: &mut dyn FnMut() -> String,
        path: &[u8],
    ) -> (Matched<'_>, Option<String>) {
        let normalized = path::normalize(path);
        let path: &str = &normalized;
        let mut method = LazyMethod {
            read: method,
            value: None,
        };
        let exempt = self.exempt.iter().any(|(m, p)| {
            p.as_ref().is_none_or(|p| p.matches(path)) && m.as_deref().is_none_or(|m| method.is(m))
        });
        let matched = if exempt {
            Matched::Unmetered
        } else {
            self.routes
                .iter()
                .find(|r| r.matches(&mut method, path))
                .or(self.default_route.as_ref())
                .map_or(Matched::Unmetered, Matched::Metered)
        };
        (matched, method.value)
    }

    /// Whether any route is leased.
    pub fn has_leased_routes(&self) -> bool {
        self.routes
            .iter()
            .chain(self.default_route.as_ref())
            .any(|r| r.mode == crate::config::Mode::Leased)
    }

    /// Every route name, the default route's included.
    pub fn route_names(&self) -> impl Iterator<Item = &str> {
        self.routes
            .iter()
            .chain(self.default_route.as_ref())
            .map(|r| r.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(
        name: &str,
        method: Option<&str>,
        path: Option<PathMatch>,
        meters: &[(&str, u64)],
    ) -> Route {
        Route::new(
            name.into(),
            method.map(Into::into),
            path,
            meters.iter().map(|(m, c)| ((*m).to_owned(), *c)).collect(),
        )
    }

    fn matcher(with_default: bool) -> RequestMatcher {
        RequestMatcher::new(
            vec![
                route(
                    "search",
                    Some("GET"),
                    Some(PathMatch::Prefix("/v1/search".into())),
                    &[("requests", 1), ("search_units", 5)],
                ),
                route(
                    "export",
                    Some("POST"),
                    Some(PathMatch::Exact("/v1/exports".into())),
                    &[("exports", 1)],
                ),
            ],
            with_default.then(|| route("api", None, None, &[("requests", 1)])),
            vec![(None, Some(PathMatch::Exact("/healthz".into())))],
        )
    }

    fn name(m: Matched<'_>) -> Option<&str> {
        match m {
            Matched::Metered(r) => Some(r.name.as_str()),
            Matched::Unmetered => None,
        }
    }

    #[test]
    fn method_and_prefix_select_the_route() {
        let m = matcher(true);
        assert_eq!(name(m.classify("GET", "/v1/search/docs")), Some("search"));
        assert_eq!(name(m.classify("POST", "/v1/search")), Some("api"));
    }

    #[test]
    fn exact_path_ignores_query_string() {
        let m = matcher(true);
        assert_eq!(
            name(m.classify("POST", "/v1/exports?format=csv")),
            Some("export")
        );
        assert_eq!(name(m.classify("POST", "/v1/exports/1")), Some("api"));
    }

    #[test]
    fn exempt_path_is_unmetered_even_with_a_query() {
        let m = matcher(true);
        assert_eq!(m.classify("GET", "/healthz?probe=1"), Matched::Unmetered);
        assert_eq!(name(m.classify("GET", "/healthz/deep")), Some("api"));
    }

    #[test]
    fn unmatched_request_without_default_route_is_unmetered() {
        let m = matcher(false);
        assert_eq!(m.classify("DELETE", "/v1/things"), Matched::Unmetered);
    }

    #[test]
    fn query_cannot_smuggle_a_matching_prefix() {
        let m = matcher(false);
        assert_eq!(m.classify("GET", "/other?/v1/search"), Matched::Unmetered);
    }

    #[test]
    fn method_is_read_only_when_a_matching_path_needs_it() {
        let m = matcher(true);
        let reads = std::cell::Cell::new(0);
        let mut read = || {
            reads.set(reads.get() + 1);
            "GET".to_owned()
        };
        let (matched, method) = m.classify_lazy(&mut read, b"/v1/items/1");
        assert_eq!(name(matched), Some("api"));
        assert_eq!(method, None);
        let (matched, method) = m.classify_lazy(&mut read, b"/v1/search/x");
        assert_eq!(name(matched), Some("search"));
        assert_eq!(method.as_deref(), Some("GET"));
        assert_eq!(reads.get(), 1);
    }

    #[test]
    fn every_spelling_of_a_path_has_its_price() {
        let m = matcher(false);
        for spelling in [
            "//v1/search?q=a",
            "/v1//search?q=a",
            "/v1/./search?q=a",
            "/x/../v1/search?q=a",
            "/v1/%73earch?q=a",
            "/v1/%2E%2e/v1/search",
            "/v1%2Fsearch",
            "/v1\\search",
            "/v1;x/search",
            "/x/..;/v1/search",
        ] {
            assert_eq!(
                name(m.classify("GET", spelling)),
                Some("search"),
                "{spelling}"
            );
        }
        assert_eq!(name(m.classify("POST", "/v1/./exports")), Some("export"));
        assert_eq!(name(m.classify("POST", "/v1/exports/.")), None);
    }

    #[test]
    fn exempt_rules_match_the_normalised_path_too() {
        let m = matcher(true);
        assert_eq!(m.classify("GET", "//healthz"), Matched::Unmetered);
        assert_eq!(m.classify("GET", "/v1/../healthz"), Matched::Unmetered);
        assert_eq!(m.classify("GET", "/%68ealthz"), Matched::Unmetered);
        // Leaving the exempt path by `..` leaves the exemption.
        assert_eq!(
            name(m.classify("GET", "/healthz/../v1/search")),
            Some("search")
        );
        assert_eq!(
            name(m.classify("GET", "/healthz/%2e%2e/v1/search")),
            Some("search")
        );
    }

    #[test]
    fn head_costs_what_get_costs() {
        let m = matcher(true);
        assert_eq!(name(m.classify("HEAD", "/v1/search")), Some("search"));
        // Only GET rules extend to HEAD.
        assert_eq!(name(m.classify("HEAD", "/v1/exports")), Some("api"));
        let exempt_get = RequestMatcher::new(
            vec![],
            Some(route("api", None, None, &[("requests", 1)])),
            vec![(Some("GET".into()), Some(PathMatch::Exact("/status".into())))],
        );
        assert_eq!(exempt_get.classify("HEAD", "/status"), Matched::Unmetered);
        assert_eq!(name(exempt_get.classify("POST", "/status")), Some("api"));
        let head_only = RequestMatcher::new(
            vec![route("probe", Some("HEAD"), None, &[("requests", 1)])],
            None,
            vec![],
        );
        assert_eq!(name(head_only.classify("HEAD", "/x")), Some("probe"));
        assert_eq!(head_only.classify("GET", "/x"), Matched::Unmetered);
    }

    #[test]
    fn methods_are_case_sensitive_as_in_http() {
        let m = matcher(true);
        assert_eq!(name(m.classify("get", "/v1/search")), Some("api"));
        assert_eq!(name(m.classify("head", "/v1/search")), Some("api"));
    }

    #[test]
    fn meters_json_is_the_consume_request_array() {
        let m = matcher(true);
        let Matched::Metered(r) = m.classify("GET", "/v1/search") else {
            panic!("not metered")
        };
        assert_eq!(
            r.meters_json,
            r#"[{"meter":"requests","cost":1},{"meter":"search_units","cost":5}]"#
        );
        let parsed: Vec<turnpike_wire::MeterCost> = serde_json::from_str(&r.meters_json).unwrap();
        assert_eq!(parsed.len(), 2);
    }
}
