//! The s2gw daemon as a child process, with its log lines to await.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::Queue;

/// The s2gw daemon as a child process, with its log lines to await.
pub struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
    lines: Queue<String>,
    all: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Write `config` (where `@STATE_DIR@` stands for a fresh state directory) to a temp
    /// file and run `s2gw run -c FILE` with RUST_LOG=info.
    pub fn start(config: &str) -> Daemon {
        Self::start_with_env(config, &[])
    }

    /// Like [`Daemon::start`], with extra environment variables for the daemon (such as
    /// `DBUS_SYSTEM_BUS_ADDRESS` pointing at a mocked BlueZ).
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Daemon {
        Self::spawn(config, env, true)
    }

    /// Like [`Daemon::start`], without echoing its log to the test's output (a bench's
    /// thousand devices would bury its figures).
    pub fn start_quiet(config: &str) -> Daemon {
        Self::spawn(config, &[], false)
    }

    fn spawn(config: &str, env: &[(&str, &str)], echo: bool) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let config = config.replace("@STATE_DIR@", &state.display().to_string());
        let file = dir.path().join("s2gw.toml");
        std::fs::write(&file, &config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_s2gw"))
            .arg("run")
            .arg("-c")
            .arg(&file)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start the s2gw binary");
        let (tx, rx) = mpsc::unbounded_channel();
        let all: Arc<Mutex<Vec<String>>> = Arc::default();
        spawn_reader(
            child.stdout.take().unwrap(),
            tx.clone(),
            Arc::clone(&all),
            echo,
        );
        spawn_reader(child.stderr.take().unwrap(), tx, Arc::clone(&all), echo);
        Daemon {
            child,
            dir,
            lines: Queue::new(rx),
            all,
        }
    }

    /// The temp directory holding the config and state.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The first log line (kept or new) that satisfies `pred`.
    pub async fn wait_log(
        &mut self,
        what: &str,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> String {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "the daemon exited ({status}) before {what}; its log:\n{}",
                self.log_tail(60)
            );
        }
        self.lines
            .wait_map(what, |l| pred(l).then(|| l.clone()), timeout)
            .await
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<String> {
        self.all.lock().unwrap().clone()
    }

    /// The last `n` log lines, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.all, n)
    }

    /// The process id (for SIGSTOP, RSS and the like).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How it exited, if it has (without waiting).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Its resident set size in KiB, from /proc (None once it is gone).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Fail if the daemon has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "the daemon exited ({status}); its log:\n{}",
                self.log_tail(60)
            );
        }
    }
}

fn tail(all: &Arc<Mutex<Vec<String>>>, n: usize) -> String {
    let all = all.lock().unwrap();
    all[all.len().saturating_sub(n)..].join("\n")
}

fn spawn_reader(
    stream: impl std::io::Read + Send + 'static,
    tx: mpsc::UnboundedSender<String>,
    all: Arc<Mutex<Vec<String>>>,
    echo: bool,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let line = strip_ansi(&line);
            if echo {
                eprintln!("[s2gw] {line}");
            }
            all.lock().unwrap().push(line.clone());
            let _ = tx.send(line);
        }
    });
}

/// Remove ANSI escape sequences (colours), should the daemon emit them.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

impl Daemon {
    /// SIGTERM, and wait for the process to exit (killed after 10 s); the temp directory
    /// stays until the `Daemon` is dropped. Returns whether it exited by itself.
    pub fn stop(&mut self) -> bool {
        self.terminate()
    }

    fn terminate(&mut self) -> bool {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            // A child process has no async exit notification here; polling its status is
            // the wait, bounded by the deadline.
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            return false;
        }
        true
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
    }
}

impl Daemon {
    /// SIGKILL: no shutdown path runs, as in a crash or an OOM kill.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free just now, for a daemon to listen on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
