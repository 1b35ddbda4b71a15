//! A child process that cannot outlive its test: stdout/stderr go to files in the
//! test's directory, it is killed on drop (also when the test panics), and on a panic
//! the tail of its logs is printed so a failure explains itself.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const TAIL_LINES: usize = 40;

pub struct Process {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    /// Log files the process writes itself (e.g. Envoy's `--log-path`).
    extra_logs: Vec<PathBuf>,
    child: Option<Child>,
}

impl Process {
    /// Starts `program` now; logs go to `<dir>/<name>.stdout` / `.stderr` (appended,
    /// so a restarted process keeps its history).
    pub fn spawn<I, S>(name: &str, program: &Path, args: I, dir: &Path) -> Process
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Self::spawn_with_env(name, program, args, Vec::<(OsString, OsString)>::new(), dir)
    }

    pub fn spawn_with_env<I, S, E, K, V>(
        name: &str,
        program: &Path,
        args: I,
        envs: E,
        dir: &Path,
    ) -> Process
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
        E: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        let mut process = Process {
            name: name.to_owned(),
            program: program.to_path_buf(),
            args: args.into_iter().map(Into::into).collect(),
            envs: envs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            stdout_path: dir.join(format!("{name}.stdout")),
            stderr_path: dir.join(format!("{name}.stderr")),
            extra_logs: Vec::new(),
            child: None,
        };
        process.start();
        process
    }

    /// Also show this file when printing logs.
    pub fn add_log_file(&mut self, path: PathBuf) {
        self.extra_logs.push(path);
    }

    fn start(&mut self) {
        let open = |path: &Path| -> File {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap_or_else(|e| panic!("cannot open log {}: {e}", path.display()))
        };
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(open(&self.stdout_path))
            .stderr(open(&self.stderr_path))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({}): {e}",
                    self.name,
                    self.program.display()
                )
            });
        self.child = Some(child);
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status if the process has ended (None while running or stopped by us).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Panics with the log tail if the process has died: for readiness loops.
    pub fn assert_running(&mut self) {
        if self.child.is_none() {
            panic!("{} is not running (stopped by the test)", self.name);
        }
        if let Some(status) = self.exited() {
            panic!(
                "{} exited early ({status}); logs:\n{}",
                self.name,
                self.log_tail(TAIL_LINES)
            );
        }
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
            unsafe {
                libc::kill(pid as libc::pid_t, signal);
            }
        }
    }

    /// SIGKILL and reap: the abrupt death of a crash or OOM kill.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                self.child = None;
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing (a hung service).
    /// Returns once every thread of it is stopped: a thread stops when it next runs,
    /// which on a loaded machine can be milliseconds after kill(2), and a request sent
    /// in between would still be served (seen: a consume decided 1 ms after the kill).
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
        let Some(pid) = self.pid() else { return };
        let started = Instant::now();
        let stopped = || {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|tasks| {
                    tasks.flatten().all(|t| {
                        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
                            // The state follows the command name's closing
                            // parenthesis: stopped, or gone.
                            stat.rsplit_once(") ")
                                .is_some_and(|(_, rest)| rest.starts_with(['T', 'Z', 'X']))
                        })
                    })
                })
                .unwrap_or(true)
        };
        while !stopped() {
            if started.elapsed() > Duration::from_secs(5) {
                panic!(
                    "{} (pid {pid}) did not stop within 5 s of SIGSTOP",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGCONT after [`Process::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// SIGHUP (e.g. "reload your config").
    pub fn hangup(&self) {
        self.signal(libc::SIGHUP);
    }

    /// Kills it if running, then starts it again with the same command line.
    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }

    /// Everything the process logged so far (stdout, stderr, extra log files).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for path in [&self.stdout_path, &self.stderr_path]
            .into_iter()
            .chain(&self.extra_logs)
        {
            if let Ok(text) = std::fs::read_to_string(path) {
                out.push_str(&text);
            }
        }
        out
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for path in [&self.stdout_path, &self.stderr_path]
            .into_iter()
            .chain(&self.extra_logs)
        {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            out.push_str(&format!(
                "---- {} ({} lines, last {}) ----\n",
                path.display(),
                all.len(),
                all.len() - start
            ));
            for line in &all[start..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // A paused process still dies of SIGKILL; resume anyway so nothing lingers.
        self.resume();
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "==== {} logs ====\n{}",
                self.name,
                self.log_tail(TAIL_LINES)
            );
        }
    }
}
