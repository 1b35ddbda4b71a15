//! Stripe's list pagination: `limit` (1–100, default 10), `starting_after` /
//! `ending_before` object ids (mutually exclusive), `has_more`.

use super::error::ApiError;

pub const DEFAULT_LIMIT: i64 = 10;
pub const MAX_LIMIT: i64 = 100;

/// The paging parameters of a list request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub limit: Option<i64>,
    pub starting_after: Option<String>,
    pub ending_before: Option<String>,
}

/// One page of `items` (already in list order) and whether more follow in the
/// direction of travel. `what` names the object type in "No such …" errors.
pub fn paginate<'a, T>(
    items: &'a [T],
    id_of: impl Fn(&T) -> &str,
    page: &Page,
    what: &str,
) -> Result<(Vec<&'a T>, bool), ApiError> {
    let limit = page.limit.unwrap_or(DEFAULT_LIMIT);
    if limit < 1 {
        return Err(ApiError::invalid_value(
            "limit",
            "This value must be greater than or equal to 1.",
        ));
    }
    if limit > MAX_LIMIT {
        return Err(ApiError::invalid_value(
            "limit",
            "This value must be less than or equal to 100.",
        ));
    }
    let limit = limit as usize;
    let position = |id: &str, param: &str| {
        items
            .iter()
            .position(|item| id_of(item) == id)
            .ok_or_else(|| ApiError {
                storable: false,
                ..ApiError::no_such(what, id, param)
            })
    };
    match (&page.starting_after, &page.ending_before) {
        (Some(_), Some(_)) => Err(ApiError::invalid_value(
            "ending_before",
            "You may only specify one of these parameters: ending_before, starting_after.",
        )
        .with_code("parameters_exclusive")),
        (Some(after), None) => {
            let from = position(after, "starting_after")? + 1;
            let rest = &items[from..];
            Ok((rest.iter().take(limit).collect(), rest.len() > limit))
        }
        (None, Some(before)) => {
            let to = position(before, "ending_before")?;
            let from = to.saturating_sub(limit);
            Ok((items[from..to].iter().collect(), from > 0))
        }
        (None, None) => Ok((items.iter().take(limit).collect(), items.len() > limit)),
    }
}

/// A Stripe list object around already rendered items.
pub fn list_json(url: &str, data: Vec<serde_json::Value>, has_more: bool) -> serde_json::Value {
    serde_json::json!({
        "object": "list",
        "data": data,
        "has_more": has_more,
        "url": url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("o{i}")).collect()
    }

    fn run(items: &[String], page: Page) -> (Vec<String>, bool) {
        let (got, more) = paginate(items, |s| s.as_str(), &page, "thing").unwrap();
        (got.into_iter().cloned().collect(), more)
    }

    #[test]
    fn first_page_defaults_to_ten_and_reports_more() {
        let items = ids(12);
        let (got, more) = run(&items, Page::default());
        assert_eq!(got.len(), 10);
        assert!(more);
        let (got, more) = run(&items[..10], Page::default());
        assert_eq!(got.len(), 10);
        assert!(!more);
    }

    #[test]
    fn starting_after_walks_forward_to_the_end() {
        let items = ids(5);
        let page = |after: &str| Page {
            limit: Some(2),
            starting_after: Some(after.into()),
            ending_before: None,
        };
        assert_eq!(
            run(&items, page("o0")),
            (vec!["o1".into(), "o2".into()], true)
        );
        assert_eq!(
            run(&items, page("o2")),
            (vec!["o3".into(), "o4".into()], false)
        );
        assert_eq!(run(&items, page("o4")), (vec![], false));
    }

    #[test]
    fn ending_before_returns_the_page_just_before_in_list_order() {
        let items = ids(5);
        let page = Page {
            limit: Some(2),
            starting_after: None,
            ending_before: Some("o3".into()),
        };
        assert_eq!(run(&items, page), (vec!["o1".into(), "o2".into()], true));
        let page = Page {
            limit: Some(5),
            starting_after: None,
            ending_before: Some("o1".into()),
        };
        assert_eq!(run(&items, page), (vec!["o0".into()], false));
    }

    #[test]
    fn limits_outside_1_to_100_and_both_cursors_are_refused() {
        let items = ids(1);
        for limit in [0, 101] {
            let err = paginate(
                &items,
                |s| s.as_str(),
                &Page {
                    limit: Some(limit),
                    ..Page::default()
                },
                "thing",
            )
            .unwrap_err();
            assert_eq!(err.param.as_deref(), Some("limit"));
        }
        let both = Page {
            limit: None,
            starting_after: Some("o0".into()),
            ending_before: Some("o0".into()),
        };
        let err = paginate(&items, |s| s.as_str(), &both, "thing").unwrap_err();
        assert_eq!(err.code, Some("parameters_exclusive"));
    }

    #[test]
    fn an_unknown_cursor_is_no_such_object() {
        let items = ids(2);
        let page = Page {
            starting_after: Some("zz".into()),
            ..Page::default()
        };
        let err = paginate(&items, |s| s.as_str(), &page, "thing").unwrap_err();
        assert_eq!((err.status, err.code), (404, Some("resource_missing")));
        assert_eq!(err.param.as_deref(), Some("starting_after"));
    }
}
