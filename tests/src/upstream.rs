//! The demo upstream (turnpike-dev's echo API), served in-process on its own thread
//! and runtime so it is independent of the test's runtime.

use std::thread::JoinHandle;

use tokio::sync::oneshot;

pub struct Upstream {
    pub port: u16,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    pub fn start() -> Upstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("upstream bind: {e}"));
        let port = listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("upstream addr: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("upstream nonblocking: {e}"));
        let (tx, rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("upstream runtime: {e}"));
            runtime.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).unwrap_or_else(|e| panic!("upstream listener: {e}"));
                // Not a graceful shutdown: Envoy keeps idle connections open, and the
                // test is over anyway.
                tokio::select! {
                    result = turnpike_devtools::upstream::serve(listener, std::future::pending()) => {
                        if let Err(e) = result {
                            eprintln!("upstream stopped: {e}");
                        }
                    }
                    _ = rx => {}
                }
            });
        });
        Upstream {
            port,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
