//! `s2gw` commands (`check`, `pair`, `pairings`, …) as processes, and what they printed.

use std::process::{Command, Output};

/// Run `s2gw ARGS` with extra environment variables (`SSL_CERT_FILE`, say).
pub fn s2gw_with(env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_s2gw"))
        .args(args)
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// Run `s2gw ARGS`.
pub fn s2gw(args: &[&str]) -> Output {
    s2gw_with(&[], args)
}

/// Its stdout and stderr, one after the other.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
