//! The real `turnpike-collector` binary: by default with a SQLite ledger in the test's
//! directory, or on a PostgreSQL URL (several replicas may share one database).

use std::path::Path;

use serde_json::Value;

use crate::counter::prometheus_sum;
use crate::http::client;
use crate::paths::collector_bin;
use crate::ports::free_port;
use crate::process::Process;

pub use crate::secrets::INGEST_SECRET as TEST_INGEST_SECRET;
use crate::secrets::{INGEST_SECRET, READ_TOKEN};

/// Events per page when [`Collector::all_events`] walks the listing.
const PAGE: usize = 50;

pub struct Collector {
    pub port: u16,
    database: String,
    process: Process,
    http: reqwest::Client,
}

impl Collector {
    /// One collector named `collector`, with a SQLite ledger at `<dir>/collector.db`.
    pub async fn start(dir: &Path) -> Collector {
        Self::start_with(dir, "collector", None, None).await
    }

    /// A collector whose logs are `<dir>/<name>.stdout|.stderr`, on `database_url`
    /// (e.g. a PostgreSQL URL from [`crate::postgres::Postgres::url`]) or, when `None`,
    /// on its own SQLite ledger `<dir>/<name>.db`; with `redis_url`, it consumes the
    /// counter's usage streams there. Waits until `/healthz` answers 200.
    pub async fn start_with(
        dir: &Path,
        name: &str,
        database_url: Option<&str>,
        redis_url: Option<&str>,
    ) -> Collector {
        Self::start_with_args(dir, name, database_url, redis_url, &[]).await
    }

    /// [`Collector::start_with`], with extra command-line arguments.
    pub async fn start_with_args(
        dir: &Path,
        name: &str,
        database_url: Option<&str>,
        redis_url: Option<&str>,
        extra: &[String],
    ) -> Collector {
        let port = free_port();
        let database = match database_url {
            Some(url) => url.to_owned(),
            None => format!("sqlite://{}", dir.join(format!("{name}.db")).display()),
        };
        let mut args = vec![
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--database".to_owned(),
            database.clone(),
            "--consumer".to_owned(),
            name.to_owned(),
        ];
        if let Some(redis) = redis_url {
            args.extend(["--redis".to_owned(), redis.to_owned()]);
        }
        args.extend(extra.iter().cloned());
        let envs = [
            ("RUST_LOG", "info"),
            ("NO_COLOR", "1"),
            ("TURNPIKE_INGEST_SECRET", INGEST_SECRET),
            ("TURNPIKE_READ_TOKEN", READ_TOKEN),
        ];
        let process = Process::spawn_with_env(name, &collector_bin(), args, envs, dir);
        let mut collector = Collector {
            port,
            database,
            process,
            http: client(),
        };
        collector.wait_healthy().await;
        collector
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The `--database` URL this collector runs on.
    pub fn database_url(&self) -> &str {
        &self.database
    }

    pub async fn wait_healthy(&mut self) {
        self.process.assert_running();
        crate::wait::until_http_ok(&self.http, &self.url("/healthz"), "the collector").await;
    }

    /// SIGKILL: a crash, possibly in the middle of a batch.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// (Kills it if running and) starts it again on the same port and database; waits
    /// for health.
    pub async fn restart(&mut self) {
        self.process.restart();
        self.wait_healthy().await;
    }

    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    pub fn logs(&self) -> String {
        self.process.logs()
    }

    /// `GET path` with the read token; the JSON answer (`None` unless 200).
    pub async fn get_json(&self, path: &str) -> Option<Value> {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(READ_TOKEN)
            .send()
            .await
            .ok()?;
        if response.status().as_u16() != 200 {
            return None;
        }
        response.json().await.ok()
    }

    /// The Prometheus exposition of `/metrics`.
    pub async fn metrics(&self) -> String {
        let response = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("collector /metrics: {e}"));
        response
            .text()
            .await
            .unwrap_or_else(|e| panic!("collector /metrics body: {e}"))
    }

    /// Batches this process stored since it started.
    pub async fn batches_stored(&self) -> u64 {
        prometheus_sum(
            &self.metrics().await,
            "turnpike_collector_batches_stored_total",
        )
    }

    /// Every row of `tenant` in the ledger, each once in its latest state (in the order
    /// of their last listing): the listing is in change order, so a row that changed
    /// during the walk (one fact arriving after another: the proxy's details after the
    /// counter's record, a settlement after its consume) comes again later.
    pub async fn latest_events(&self, tenant: &str) -> Option<Vec<Value>> {
        let listed = self.all_events(tenant).await?;
        let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        let mut rows: Vec<Option<Value>> = Vec::with_capacity(listed.len());
        for row in listed {
            let id = row["id"].as_str().unwrap_or_default().to_owned();
            if let Some(i) = at.insert(id, rows.len()) {
                rows[i] = None;
            }
            rows.push(Some(row));
        }
        Some(rows.into_iter().flatten().collect())
    }

    /// Every event of `tenant` in the ledger, in the listing's order, walking all
    /// pages of `/v1/tenants/{tenant}/events` by their cursors; `None` if any page
    /// cannot be read (the collector may be restarting).
    pub async fn all_events(&self, tenant: &str) -> Option<Vec<Value>> {
        let mut events = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut query = vec![("limit", PAGE.to_string())];
            if let Some(cursor) = &after {
                query.push(("after", cursor.clone()));
            }
            let response = self
                .http
                .get(self.url(&format!("/v1/tenants/{tenant}/events")))
                .bearer_auth(READ_TOKEN)
                .query(&query)
                .send()
                .await
                .ok()?;
            if response.status().as_u16() != 200 {
                return None;
            }
            let page: Value = response.json().await.ok()?;
            let batch = page["events"].as_array()?;
            assert!(
                batch.len() <= PAGE,
                "a page of {} events, asked for {PAGE}",
                batch.len()
            );
            events.extend(batch.iter().cloned());
            after = Some(page["next_cursor"].as_str()?.to_owned());
            if page["more"] != serde_json::json!(true) {
                return Some(events);
            }
        }
    }
}
