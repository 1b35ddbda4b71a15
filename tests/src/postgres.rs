//! A throwaway PostgreSQL server for tests: `initdb` into a temp dir, `pg_ctl start`
//! on a free 127.0.0.1 port, stopped and deleted when the guard drops (also when the
//! test panics). PostgreSQL refuses to run as root, so as root every command runs as
//! the `postgres` user through `runuser`.
//!
//! The one launcher for every test that needs PostgreSQL: the end-to-end stacks here
//! and the collector's own tests (through a dev-dependency on this crate). The binaries
//! come from `$TURNPIKE_PG_BIN`, else the newest `/usr/lib/postgresql/<version>/bin`.
//!
//! ```ignore
//! let pg = Postgres::start(Durability::Fast).unwrap_or_else(|e| panic!("{e}"));
//! pg.create_database("ledger").unwrap_or_else(|e| panic!("{e}"));
//! let url = pg.url("ledger"); // postgres://postgres@127.0.0.1:<port>/ledger
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// How the server trades durability for speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `fsync=off`: fast, fine when the test does not crash PostgreSQL itself.
    Fast,
    /// PostgreSQL defaults (fsync on): for measurements.
    Durable,
}

pub struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres_user: bool,
    // Declared last: removed after `drop` has stopped the server.
    dir: tempfile::TempDir,
}

impl Postgres {
    /// Start a server, or explain why it cannot be started.
    pub fn start(durability: Durability) -> Result<Postgres, String> {
        let bin = find_bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("turnpike-pg-")
            .tempdir()
            .map_err(|e| format!("creating temp dir: {e}"))?;
        // SAFETY: geteuid has no preconditions.
        let as_postgres_user = unsafe { libc::geteuid() } == 0;
        if as_postgres_user {
            run(
                Command::new("chown").arg("postgres:").arg(dir.path()),
                "chown temp dir to postgres",
            )?;
        }
        let data = dir.path().join("data");
        let mut pg = Postgres {
            bin,
            data,
            port: 0,
            as_postgres_user,
            dir,
        };
        pg.command("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "-D",
            ])
            .arg(&pg.data)
            .output()
            .map_err(|e| format!("running initdb: {e}"))
            .and_then(|o| check(o, "initdb"))?;
        pg.port = crate::ports::free_port();
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            pg.port,
            pg.dir.path().display()
        );
        if durability == Durability::Fast {
            options.push_str(" -c fsync=off -c full_page_writes=off");
        }
        let log = pg.dir.path().join("postgres.log");
        let started = pg
            .command("pg_ctl")
            .arg("-D")
            .arg(&pg.data)
            .arg("-l")
            .arg(&log)
            .args(["-o", &options, "-w", "-t", "60", "start"])
            .output()
            .map_err(|e| format!("running pg_ctl start: {e}"))
            .and_then(|o| check(o, "pg_ctl start"));
        if let Err(err) = started {
            let log_text = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("{err}\npostgres.log:\n{log_text}"));
        }
        Ok(pg)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connection URL for `database` (create it first with [`Postgres::create_database`]).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn create_database(&self, name: &str) -> Result<(), String> {
        self.command("createdb")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                name,
            ])
            .output()
            .map_err(|e| format!("running createdb: {e}"))
            .and_then(|o| check(o, "createdb"))
    }

    /// Runs one SQL statement through `psql` against `database`; returns its rows,
    /// unaligned without headers (`-At`, fields separated by `|`), or why it failed.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let output = self
            .command("psql")
            .args([
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ])
            .output()
            .map_err(|e| format!("running psql: {e}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        check(output, "psql").map(|()| stdout)
    }

    /// The server's log so far (to explain a failure).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Immediate: the data dir is deleted next, nothing needs a clean checkpoint.
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .output();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!(
                "==== postgres.log (last {} lines) ====\n{}",
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

/// `$TURNPIKE_PG_BIN`, else the newest `/usr/lib/postgresql/<version>/bin`.
fn find_bin_dir() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("TURNPIKE_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .map_err(|e| {
            format!(
                "PostgreSQL not found ({}: {e}); install it: apt-get install -y postgresql",
                root.display()
            )
        })?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| format!("no PostgreSQL with initdb under {}", root.display()))
}

fn run(command: &mut Command, what: &str) -> Result<(), String> {
    command
        .output()
        .map_err(|e| format!("{what}: {e}"))
        .and_then(|o| check(o, what))
}

fn check(output: Output, what: &str) -> Result<(), String> {
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}
