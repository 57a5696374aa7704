//! A Python test peer from `tests/peers/` as a child process: its stdout as a queue of
//! lines, its stderr echoed for the test log, killed when dropped.

use std::process::Stdio;

use std::path::Path;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use super::{Queue, python, workspace};

/// One running peer.
pub struct PythonPeer {
    /// Every line the peer printed, to await by predicate.
    pub lines: Queue<String>,
    child: Child,
    /// Held open: a peer that watches stdin stops when it closes.
    _stdin: Option<ChildStdin>,
}

impl PythonPeer {
    /// Start `tests/peers/<script>` with `args` under the venv's Python; `tag` prefixes
    /// its output in the test log.
    pub fn spawn(script: &str, args: &[&str], tag: &str) -> PythonPeer {
        Self::spawn_with(&python(), script, args, tag)
    }

    /// [`spawn`](Self::spawn) under another interpreter (`interpreter`).
    pub fn spawn_with(interpreter: &Path, script: &str, args: &[&str], tag: &str) -> PythonPeer {
        let path = workspace().join("tests/peers").join(script);
        let mut child = Command::new(interpreter)
            .arg(&path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()));
        let (tx, rx) = mpsc::unbounded_channel();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let out_tag = tag.to_string();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                eprintln!("[{out_tag}] {line}");
                let _ = tx.send(line);
            }
        });
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let err_tag = tag.to_string();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                eprintln!("[{err_tag}:err] {line}");
            }
        });
        PythonPeer {
            lines: Queue::new(rx),
            _stdin: child.stdin.take(),
            child,
        }
    }

    /// Write one line to the peer's stdin.
    pub async fn send(&mut self, line: &str) {
        let stdin = self._stdin.as_mut().expect("the peer's stdin is open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// The process id (for its RSS and the like).
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the peer is running")
    }

    /// The peer's exit status, once it exited by itself.
    pub async fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().await.expect("cannot wait for the peer")
    }
}
