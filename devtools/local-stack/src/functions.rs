//! The function binaries: built once up front, then run by `cargo lambda watch`, the Lambda
//! runtime emulator, in a process group of its own so that stopping the stack stops every
//! function process with it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use crate::logging;

#[derive(Debug, thiserror::Error)]
pub enum FunctionsError {
    #[error("cannot start `{command}`: {source} (is it installed? `pip install cargo-lambda`)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed with {status}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
    },
    #[error("the Lambda emulator exited early with {0}")]
    Exited(std::process::ExitStatus),
    #[error("the Lambda emulator did not listen on port {port} within {waited:?}")]
    NotListening { port: u16, waited: Duration },
    #[error("waiting for the emulator: {0}")]
    Wait(#[source] std::io::Error),
}

/// A command running the cargo that runs us (`cargo run` sets `CARGO`), else the one on the
/// PATH, without the variables `cargo run` set for us: build scripts such as ring's watch
/// `CARGO_PKG_NAME`, `CARGO_MANIFEST_DIR` and the like, so inheriting ours would make every
/// nested build rebuild them (and the next plain `cargo build` rebuild them back).
pub fn cargo_command() -> Command {
    let cargo = std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from);
    let mut command = Command::new(cargo);
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(is_cargo_run_variable) {
            command.env_remove(&name);
        }
    }
    command
}

/// The variables cargo sets for the program it runs (`cargo run`, `cargo test`).
pub fn is_cargo_run_variable(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_MANIFEST_")
        || matches!(
            name,
            "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "OUT_DIR"
        )
}

/// Builds the binaries the stack invokes, in one cargo run so they build in parallel, and
/// with the same package selection as the emulator's `cargo run --bin <name>` in the
/// workspace root, so that the emulator finds them fresh and builds nothing more.
pub async fn build(root: &Path, binaries: &[String]) -> Result<(), FunctionsError> {
    let mut command = cargo_command();
    command.arg("build").current_dir(root);
    for binary in binaries {
        command.arg("--bin").arg(binary);
    }
    let description = format!("cargo build --bin {}", binaries.join(" --bin "));
    tracing::info!("{description}");
    run_logged(command, &description, "build").await
}

async fn run_logged(
    mut command: Command,
    description: &str,
    prefix: &'static str,
) -> Result<(), FunctionsError> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|source| FunctionsError::Spawn {
        command: description.to_owned(),
        source,
    })?;
    forward(&mut child, prefix);
    let status = child.wait().await.map_err(FunctionsError::Wait)?;
    if status.success() {
        Ok(())
    } else {
        Err(FunctionsError::Failed {
            command: description.to_owned(),
            status,
        })
    }
}

/// Passes a child's output through, line by line, under `prefix`.
fn forward(child: &mut Child, prefix: &'static str) {
    fn pump(stream: impl AsyncRead + Unpin + Send + 'static, prefix: &'static str) {
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                logging::child_line(prefix, &line);
            }
        });
    }
    if let Some(stdout) = child.stdout.take() {
        pump(stdout, prefix);
    }
    if let Some(stderr) = child.stderr.take() {
        pump(stderr, prefix);
    }
}

#[derive(Debug, Clone)]
pub struct EmulatorOptions {
    pub root: PathBuf,
    pub invoke_port: u16,
    /// Rebuild and restart a function when its code changes.
    pub reload: bool,
    /// Instances per function (Lambda would scale out; one is plenty on a laptop).
    pub concurrency: u32,
    /// Set for every function on top of the stack's own environment, which they inherit.
    pub env: Vec<(String, String)>,
}

/// `cargo lambda watch`, running.
pub struct Emulator {
    child: Child,
    process_group: Option<i32>,
}

impl Emulator {
    pub fn spawn(options: &EmulatorOptions) -> Result<Self, FunctionsError> {
        let mut command = cargo_command();
        command
            .args(["lambda", "watch", "--invoke-address", "127.0.0.1"])
            .arg("--invoke-port")
            .arg(options.invoke_port.to_string())
            .arg("--concurrency")
            .arg(options.concurrency.to_string())
            .current_dir(&options.root)
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group: a terminal's Ctrl-C reaches only us, and we stop the group.
            .process_group(0)
            .kill_on_drop(true);
        if !options.reload {
            command.arg("--ignore-changes");
        }
        // SAFETY: the closure runs in the forked child before exec and only makes one
        // async-signal-safe system call. It asks the kernel to stop the emulator if this
        // process dies without cleaning up (SIGKILL), so no orphan keeps the ports.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let description = "cargo lambda watch".to_owned();
        let mut child = command.spawn().map_err(|source| FunctionsError::Spawn {
            command: description,
            source,
        })?;
        forward(&mut child, "functions");
        let process_group = child.id().and_then(|id| i32::try_from(id).ok());
        Ok(Self {
            child,
            process_group,
        })
    }

    /// Waits until the invoke API accepts connections.
    pub async fn wait_listening(
        &mut self,
        port: u16,
        within: Duration,
    ) -> Result<(), FunctionsError> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().map_err(FunctionsError::Wait)? {
                return Err(FunctionsError::Exited(status));
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if started.elapsed() > within {
                return Err(FunctionsError::NotListening {
                    port,
                    waited: within,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Resolves when the emulator exits by itself.
    pub async fn exited(&mut self) -> Result<std::process::ExitStatus, FunctionsError> {
        self.child.wait().await.map_err(FunctionsError::Wait)
    }

    /// Stops the emulator and every function process it started: SIGTERM to the group,
    /// then SIGKILL to whatever is left after a grace period.
    pub async fn stop(mut self) {
        let Some(group) = self.process_group else {
            return;
        };
        signal_group(group, libc::SIGTERM);
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!("the emulator ignored SIGTERM; killing it");
        }
        // Function processes may outlive the emulator itself: clear the whole group.
        signal_group(group, libc::SIGKILL);
        let _ = self.child.wait().await;
    }
}

fn signal_group(group: i32, signal: libc::c_int) {
    // SAFETY: kill(2) with a negative pid signals a process group; it touches no memory.
    // The group is the emulator's own (process_group(0) above), never ours.
    unsafe {
        libc::kill(-group, signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_variables_of_cargo_run_are_dropped() {
        for name in [
            "CARGO_PKG_NAME",
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_BIN_NAME",
        ] {
            assert!(is_cargo_run_variable(name), "{name}");
        }
        for name in [
            "CARGO",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_JOBS",
            "PATH",
        ] {
            assert!(!is_cargo_run_variable(name), "{name}");
        }
    }
}
