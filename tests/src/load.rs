//! Load through Envoy from many concurrent clients, remembering what was admitted: the
//! consume id the upstream saw for every 200. Fault tests compare that set with the
//! ledger, id by id.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use turnpike_devtools::upstream::Echo;

/// What the clients saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Consume ids of the requests answered 200 (the upstream ran them).
    pub admitted: HashSet<String>,
    /// Answers by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no answer (connection refused or reset, timeout).
    pub errors: u64,
}

impl LoadReport {
    /// How many requests were answered with `status`.
    pub fn count(&self, status: u16) -> u64 {
        self.statuses.get(&status).copied().unwrap_or(0)
    }

    fn merge(&mut self, other: LoadReport) {
        self.admitted.extend(other.admitted);
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.errors += other.errors;
    }
}

/// Running load; [`Load::stop`] ends it and returns what the clients saw.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<LoadReport>>,
}

impl Load {
    /// `clients` loops of `GET url` with `token`, each on its own keep-alive
    /// connection, until stopped.
    pub fn start(url: &str, token: &str, clients: usize) -> Load {
        Load::paced(url, token, clients, Duration::ZERO)
    }

    /// As [`Load::start`], each client pausing `pause` after every answer: a steady
    /// rate instead of as fast as the proxy answers.
    pub fn paced(url: &str, token: &str, clients: usize, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|_| {
                let (url, token, stop) = (url.to_owned(), token.to_owned(), stop.clone());
                tokio::spawn(async move {
                    let http = reqwest::Client::builder()
                        .no_proxy()
                        .timeout(Duration::from_secs(10))
                        .build()
                        .unwrap_or_else(|e| panic!("load client: {e}"));
                    let mut report = LoadReport::default();
                    while !stop.load(Ordering::Relaxed) {
                        match http.get(&url).bearer_auth(&token).send().await {
                            Ok(response) => {
                                let status = response.status().as_u16();
                                *report.statuses.entry(status).or_default() += 1;
                                let body = response.bytes().await.unwrap_or_default();
                                if status == 200 {
                                    let echo: Echo = serde_json::from_slice(&body)
                                        .unwrap_or_else(|e| panic!("not the echo upstream: {e}"));
                                    if let Some(id) = echo.header("turnpike-consume-id") {
                                        report.admitted.insert(id.to_owned());
                                    }
                                }
                            }
                            Err(_) => {
                                report.errors += 1;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                    report
                })
            })
            .collect();
        Load { stop, tasks }
    }

    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = LoadReport::default();
        for task in self.tasks {
            report.merge(task.await.unwrap_or_else(|e| panic!("load client: {e}")));
        }
        report
    }
}
