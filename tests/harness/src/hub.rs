//! A hub process: `tiffin serve` started from a built binary, the address it prints, and the
//! process killed when dropped.

use anyhow::Context;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// What the hub prints before the address it listens on.
pub const LISTENING: &str = "Tiffin listening on ";

/// A running `tiffin serve`, killed (SIGKILL) when dropped.
pub struct HubProcess {
    child: Child,
    url: String,
}

impl HubProcess {
    /// Runs `command` (a `tiffin` binary, its environment and directory set) as
    /// `serve --bind {bind}` with its log (stderr) to `stderr`; every line it prints also goes
    /// to `printed`. Waits up to a minute for the address it listens on.
    pub fn serve(
        mut command: Command,
        bind: &str,
        stderr: Stdio,
        printed: Arc<Mutex<Vec<String>>>,
    ) -> anyhow::Result<HubProcess> {
        let mut child = command
            .args(["serve", "--bind", bind])
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", command.get_program().to_string_lossy()))?;
        let stdout = child.stdout.take().context("hub stdout")?;
        // Dropping `child` on failure would leave the process running.
        let url = match announced_keeping(stdout, LISTENING, Duration::from_secs(60), printed) {
            Ok(url) => url,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e.context("the hub did not start within 60 s"));
            }
        };
        Ok(HubProcess { child, url })
    }

    /// Where it listens: `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }

    /// SIGKILL: nothing gets a chance to flush.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a child process prints after `prefix` on its first such line (where it listens),
/// waiting at most `within`; the rest of its output is read and dropped.
pub fn announced(
    stdout: ChildStdout,
    prefix: &'static str,
    within: Duration,
) -> anyhow::Result<String> {
    read_lines(stdout, prefix, within, None)
}

/// [`announced`], keeping every line the process prints in `printed`.
pub fn announced_keeping(
    stdout: ChildStdout,
    prefix: &'static str,
    within: Duration,
    printed: Arc<Mutex<Vec<String>>>,
) -> anyhow::Result<String> {
    read_lines(stdout, prefix, within, Some(printed))
}

fn read_lines(
    stdout: ChildStdout,
    prefix: &'static str,
    within: Duration,
    printed: Option<Arc<Mutex<Vec<String>>>>,
) -> anyhow::Result<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(printed) = &printed {
                printed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(line.clone());
            }
            if let Some(rest) = line.strip_prefix(prefix) {
                let _ = tx.send(rest.to_owned());
            }
        }
    });
    Ok(rx.recv_timeout(within)?)
}
