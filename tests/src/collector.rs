//! The real `turnpike-collector` binary with a SQLite ledger in the test's directory.

use std::path::Path;
use std::time::Duration;

use crate::http::client;
use crate::paths::collector_bin;
use crate::ports::free_port;
use crate::process::Process;
use crate::wait::eventually;

pub const TEST_INGEST_SECRET: &str = "test-ingest-secret";

pub struct Collector {
    pub port: u16,
    process: Process,
    http: reqwest::Client,
}

impl Collector {
    pub async fn start(dir: &Path) -> Collector {
        let port = free_port();
        let database = format!("sqlite://{}", dir.join("ledger.db").display());
        let args = [
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--database".to_owned(),
            database,
            "--ingest-secret".to_owned(),
            TEST_INGEST_SECRET.to_owned(),
        ];
        let envs = [("RUST_LOG", "info"), ("NO_COLOR", "1")];
        let process = Process::spawn_with_env("collector", &collector_bin(), args, envs, dir);
        let mut collector = Collector {
            port,
            process,
            http: client(),
        };
        collector.wait_healthy().await;
        collector
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn wait_healthy(&mut self) {
        self.process.assert_running();
        let (http, url) = (self.http.clone(), self.url("/healthz"));
        eventually(
            "the collector's /healthz to answer 200",
            Duration::from_secs(15),
            || {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    let response = http.get(&url).send().await.ok()?;
                    (response.status().as_u16() == 200).then_some(())
                }
            },
        )
        .await;
    }

    pub async fn restart(&mut self) {
        self.process.restart();
        self.wait_healthy().await;
    }

    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }
}
