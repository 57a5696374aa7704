//! Paths: the workspace, the Python peers' interpreters and the shared folder.

use std::path::PathBuf;

/// The workspace root (the s2gw package is at the root).
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python interpreter with s2-python 0.11.1: `$S2GW_TEST_PYTHON`, else the
/// workspace's `.venv`. Fails (never skips) when there is none.
pub fn python() -> PathBuf {
    let path = std::env::var_os("S2GW_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv/bin/python"));
    assert!(
        path.exists(),
        "no Python for the s2-python peer at {}: run scripts/test.sh, or ./scripts/python-peers.sh \
         (or `python3 -m venv .venv && .venv/bin/pip install 's2-python[ws]==0.11.1'`), \
         or set S2GW_TEST_PYTHON",
        path.display()
    );
    path
}

/// The Python of the Home Assistant venv (Home Assistant Core needs Python >= 3.13):
/// `$S2GW_TEST_HA_PYTHON`, else the workspace's `.venv-ha`. Fails (never skips) when
/// there is none.
pub fn ha_python() -> PathBuf {
    let path = std::env::var_os("S2GW_TEST_HA_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv-ha/bin/python"));
    assert!(
        path.exists(),
        "no Home Assistant venv at {}: run scripts/test.sh or scripts/ha-peer.sh, or set \
         S2GW_TEST_HA_PYTHON",
        path.display()
    );
    path
}

/// The shared folder with the official schemas: `$S2GW_SHARED`, else `<workspace>/../shared`.
pub fn shared_dir() -> PathBuf {
    let path = std::env::var_os("S2GW_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("../shared"));
    assert!(
        path.join("s2-json-schema").is_dir(),
        "no S2 JSON schemas under {}/s2-json-schema: set S2GW_SHARED to the shared folder \
         (scripts/test.sh does)",
        path.display()
    );
    path
}
