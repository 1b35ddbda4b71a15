//! The ledger, as the counter sees it: where a tenant's long windows come back from
//! after Redis lost them. One call to the collector's totals API per re-seed.

use std::time::Duration;

use turnpike_wire::{TimeRange, TotalsRequest, TotalsResponse};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger at {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("ledger at {url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("ledger at {url} answered {got} ranges for {asked}")]
    Shape {
        url: String,
        asked: usize,
        got: usize,
    },
}

pub struct LedgerClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl LedgerClient {
    pub fn new(base: &str, token: String, timeout: Duration) -> Result<LedgerClient, String> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build the ledger client: {e}"))?;
        Ok(LedgerClient {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// Billable units per meter of `tenant` in each range (unix seconds), in order.
    pub async fn totals(
        &self,
        tenant: &str,
        ranges: &[(i64, i64)],
    ) -> Result<Vec<Vec<(String, u64)>>, LedgerError> {
        let url = format!("{}/v1/tenants/{tenant}/totals", self.base);
        let body = TotalsRequest {
            ranges: ranges
                .iter()
                .map(|&(start, end)| TimeRange {
                    start_ms: start.saturating_mul(1000),
                    end_ms: end.saturating_mul(1000),
                })
                .collect(),
        };
        let http_err = |source| LedgerError::Http {
            url: url.clone(),
            source,
        };
        let response = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .map_err(http_err)?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(LedgerError::Status {
                url,
                status: status.as_u16(),
                body: body.chars().take(300).collect(),
            });
        }
        let answer: TotalsResponse = response.json().await.map_err(http_err)?;
        if answer.ranges.len() != ranges.len() {
            return Err(LedgerError::Shape {
                url,
                asked: ranges.len(),
                got: answer.ranges.len(),
            });
        }
        Ok(answer
            .ranges
            .into_iter()
            .map(|r| {
                r.meters
                    .into_iter()
                    .map(|m| (m.meter, u64::try_from(m.quantity).unwrap_or(0)))
                    .collect()
            })
            .collect())
    }
}
