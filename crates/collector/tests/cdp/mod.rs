//! Just enough of the Chrome DevTools Protocol to drive headless Chromium from a test:
//! open a page, send a header, wait for the load, evaluate JavaScript, collect console
//! errors and take screenshots.
//!
//! Why not `chromiumoxide` or WebDriver: chromiumoxide compiles the whole generated
//! protocol (minutes on a 2-core machine) for the six methods used here, and WebDriver
//! (fantoccini + chromedriver) has no standard way to read the console. CDP over one
//! WebSocket (tokio-tungstenite) gives both, in a page of code.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Chromium {
    child: Child,
    _profile: tempfile::TempDir,
    socket: Socket,
    session: String,
    next_id: u64,
    events: Vec<Value>,
}

/// Debian's `chromium`, or `$CHROMIUM`.
pub fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("CHROMIUM") {
        return PathBuf::from(path);
    }
    for candidate in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    panic!("no chromium: run scripts/ensure-tools.sh (apt-get install chromium)");
}

impl Chromium {
    pub async fn launch() -> Chromium {
        let profile = tempfile::tempdir().expect("profile dir");
        let log = std::fs::File::create(profile.path().join("chromium.log")).expect("log");
        let child = Command::new(binary())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--window-size=1280,900",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn chromium");
        // Chromium writes the port it chose, and the browser target's path, here.
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let (port, path) = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    break (port.to_owned(), path.to_owned());
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not start in 30 s: {}",
                std::fs::read_to_string(profile.path().join("chromium.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (socket, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}{path}"))
            .await
            .expect("connect to chromium");
        let mut browser = Chromium {
            child,
            _profile: profile,
            socket,
            session: String::new(),
            next_id: 1,
            events: Vec::new(),
        };
        let target = browser
            .browser_call("Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let attached = browser
            .browser_call(
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        browser.session = attached["sessionId"].as_str().expect("session").to_owned();
        for domain in [
            "Page.enable",
            "Runtime.enable",
            "Log.enable",
            "Network.enable",
        ] {
            browser.call(domain, json!({})).await;
        }
        browser
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({ "width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false }),
            )
            .await;
        browser
    }

    async fn send(&mut self, method: &str, params: Value, session: bool) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if session {
            message["sessionId"] = json!(self.session);
        }
        self.socket
            .send(Message::text(message.to_string()))
            .await
            .expect("send to chromium");
        loop {
            let reply = self.read().await;
            if reply["id"] == id {
                if let Some(error) = reply.get("error") {
                    panic!("{method}: {error}");
                }
                return reply["result"].clone();
            }
            self.events.push(reply);
        }
    }

    async fn read(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), self.socket.next())
                .await
                .expect("chromium answers within 30 s")
                .expect("chromium connection open")
                .expect("read from chromium");
            if let Message::Text(text) = frame {
                return serde_json::from_str(&text).expect("CDP JSON");
            }
        }
    }

    async fn browser_call(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, false).await
    }

    /// A method of the page's session.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, true).await
    }

    /// Sends `Authorization: Basic user:password` with every request of the page.
    pub async fn basic_auth(&mut self, user: &str, password: &str) {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.call(
            "Network.setExtraHTTPHeaders",
            json!({ "headers": { "Authorization": format!("Basic {token}") } }),
        )
        .await;
    }

    /// Loads `url` and waits for its load event; returns the HTTP status.
    pub async fn goto(&mut self, url: &str) -> u16 {
        self.events.clear();
        let nav = self.call("Page.navigate", json!({ "url": url })).await;
        assert!(nav.get("errorText").is_none(), "{url}: {nav}");
        let mut status = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.events.iter().find_map(|e| {
                (e["method"] == "Network.responseReceived" && e["params"]["type"] == "Document")
                    .then(|| e["params"]["response"]["status"].as_u64())
                    .flatten()
            }) {
                status = s as u16;
            }
            if self
                .events
                .iter()
                .any(|e| e["method"] == "Page.loadEventFired")
            {
                return status;
            }
            assert!(Instant::now() < deadline, "{url}: no load event in 30 s");
            let event = self.read().await;
            self.events.push(event);
        }
    }

    /// The value of a JavaScript expression (promises awaited).
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression}: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Errors the page reported so far: uncaught exceptions, `console.error`, and
    /// browser log entries at level error (failed loads included).
    pub fn errors(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e["method"].as_str()? {
                "Runtime.exceptionThrown" => Some(e["params"]["exceptionDetails"].to_string()),
                "Runtime.consoleAPICalled"
                    if matches!(e["params"]["type"].as_str(), Some("error" | "assert")) =>
                {
                    Some(e["params"]["args"].to_string())
                }
                "Log.entryAdded" if e["params"]["entry"]["level"] == "error" => {
                    Some(e["params"]["entry"].to_string())
                }
                _ => None,
            })
            .collect()
    }

    /// A PNG of the whole page.
    pub async fn screenshot(&mut self, path: &Path) {
        let metrics = self.call("Page.getLayoutMetrics", json!({})).await;
        let size = &metrics["cssContentSize"];
        let width = size["width"].as_f64().unwrap_or(1280.0).max(1280.0);
        let height = size["height"]
            .as_f64()
            .unwrap_or(900.0)
            .clamp(300.0, 6000.0);
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({
                    "format": "png",
                    "captureBeyondViewport": true,
                    "clip": { "x": 0, "y": 0, "width": width, "height": height, "scale": 1 }
                }),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("base64 PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
