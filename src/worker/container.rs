//! Running one invocation as a container: create, attach, start, feed stdin, wait with the
//! function's timeout, collect stdout and stderr under caps, and always remove.

mod kept;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument as _;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, KillContainerOptionsBuilder, RemoveContainerOptionsBuilder,
};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use crate::docker::{
    LABEL_DEADLINE, LABEL_FUNCTION, LABEL_INSTALLATION, LABEL_INVOCATION, LABEL_WORKER,
};
use crate::function::{InputMode, Network, Snapshot};

/// How long output may keep flowing after the container exited. The engine delivers the rest of
/// the output on the attach stream and then ends it, but a loaded engine can be seconds behind
/// (2 s was too short under the full test suite: an event's `cat` was recorded succeeded with an
/// empty output): the bound only guards against an engine that never ends the stream, and a run
/// cut short by it is marked truncated.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(30);

/// How long a run killed by SIGKILL waits for the engine to say whether it was out of memory.
const OOM_SETTLE: Duration = Duration::from_secs(5);

/// A failure of the platform, not of the function: the run never got a fair chance.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("bad input for args mode: {0}")]
    BadArgs(String),
    #[error("container could not be created: {0}")]
    Create(bollard::errors::Error),
    #[error("container could not be started: {0}")]
    Start(bollard::errors::Error),
    #[error("docker engine failed during the run: {0}")]
    Engine(bollard::errors::Error),
    /// A kept container is no longer running (or no longer exists): take another.
    #[error("the kept container is gone: {0}")]
    Gone(bollard::errors::Error),
    /// The image declares a `VOLUME` Granda can't cap.
    #[error("{0}")]
    Volume(String),
    #[error("no socket directory for a hot container: {0}")]
    SocketDir(std::io::Error),
    /// A hot container that never listened: the function's own fault, not retried as the
    /// platform's.
    #[error(transparent)]
    NotReady(super::hot::StartError),
}

/// How the container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    Code(i64),
    TimedOut,
}

/// What one container run produced.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) exit: Exit,
    pub(crate) oom_killed: bool,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stdout_truncated: bool,
    pub(crate) stderr: Vec<u8>,
    pub(crate) stderr_truncated: bool,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) finished_at: DateTime<Utc>,
    /// Container start to exit: the compute time.
    pub(crate) duration: Duration,
}

/// Output caps, in bytes.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    pub stdout: usize,
    pub stderr: usize,
}

/// Runs containers on one engine on behalf of one worker.
#[derive(Clone)]
pub struct Runner {
    docker: Docker,
    worker_id: String,
    caps: Caps,
    /// Each image's own command (entrypoint, cmd, working dir, user), for warm execs.
    commands: Arc<Mutex<HashMap<String, ImageCommand>>>,
    /// The `granda.installation` label of pool containers.
    installation: Option<String>,
}

/// What an image runs when started (what a warm exec runs instead), and the volumes it declares.
#[derive(Clone, Debug)]
struct ImageCommand {
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    working_dir: Option<String>,
    user: Option<String>,
    /// The image's `VOLUME`s: each becomes a capped tmpfs ([`cap_volumes`]).
    volumes: Vec<String>,
    /// When the engine was asked: an image retagged since is asked again after [`IMAGE_TTL`].
    inspected: Instant,
}

/// How long what an image declares is trusted before the engine is asked again.
const IMAGE_TTL: Duration = Duration::from_secs(30);

/// The removal of a finished run's container, under way.
pub(crate) type Removal = tokio::task::JoinHandle<()>;

/// Where the idle entrypoint of warm containers is mounted inside them.
pub(crate) const IDLE_PATH: &str = "/granda/idle";

/// Where a warm container's journal directory is mounted: what the idle binary's `run` keeps of
/// the run going on in it ([`crate::worker::dead_run`] reads it after its worker died).
pub const JOURNAL_DIR: &str = "/granda/journal";

/// How a kept (warm or hot) container differs from an invocation's own.
struct Kept {
    /// The `granda.pool` label: `warm` or `hot`.
    pool: &'static str,
    /// `None`: the image's own.
    entrypoint: Option<Vec<String>>,
    binds: Vec<String>,
    env: Vec<String>,
}

impl Runner {
    pub fn new(docker: Docker, worker_id: String, caps: Caps) -> Self {
        Runner {
            docker,
            worker_id,
            caps,
            commands: Arc::default(),
            installation: None,
        }
    }

    /// Labels every container as `installation`'s ([`crate::docker::installation`]).
    pub(crate) fn with_installation(mut self, installation: String) -> Self {
        self.installation = Some(installation);
        self
    }

    pub(crate) fn docker(&self) -> &Docker {
        &self.docker
    }

    pub(crate) fn caps(&self) -> Caps {
        self.caps
    }

    /// The installation its containers are labelled with, when set.
    pub(crate) fn installation(&self) -> Option<&str> {
        self.installation.as_deref()
    }

    /// Runs `function` on `input` as invocation `id`. The container is removed whatever happens,
    /// by the returned task: removal is cleanup, not part of the answer, so the caller can reply
    /// first and then wait for it (and so not start more containers than it removes).
    #[tracing::instrument(name = "container", skip_all, fields(%id, function = %function.name))]
    pub(crate) async fn run(
        &self,
        id: Uuid,
        function: &Snapshot,
        input: &[u8],
    ) -> (Result<Run, PlatformError>, Option<Removal>) {
        let image = match self.image_command(&function.run.image).await {
            Ok(image) => image,
            Err(e) => return (Err(e), None),
        };
        match self.config(id, function, input) {
            Ok(mut config) => {
                if let Err(e) = cap_volumes(
                    &mut config,
                    &function.run.image,
                    &image.volumes,
                    function.run.tmp_mb,
                ) {
                    return (Err(e), None);
                }
                if let Some(host) = config.host_config.as_mut() {
                    host.log_config = Some(kept_output(self.caps));
                }
                self.create_and_run(config, function, input).await
            }
            Err(e) => (Err(e), None),
        }
    }

    async fn create_and_run(
        &self,
        config: ContainerCreateBody,
        function: &Snapshot,
        input: &[u8],
    ) -> (Result<Run, PlatformError>, Option<Removal>) {
        let created = match self
            .docker
            .create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                config,
            )
            .instrument(tracing::info_span!("create"))
            .await
        {
            Ok(created) => created,
            Err(e) => return (Err(PlatformError::Create(e)), None),
        };
        let container = created.id;
        // Removed even if the run panics: the guard removes it as the panic unwinds.
        let guard = RemoveOnDrop {
            docker: self.docker.clone(),
            container: Some(container.clone()),
        };
        let result = self
            .attach_start_wait(&container, function, input)
            .instrument(tracing::info_span!("start and wait"))
            .await;
        guard.disarm();
        let docker = self.docker.clone();
        let removal = tokio::spawn(async move { remove(&docker, &container).await });
        (result, Some(removal))
    }

    /// The container Granda creates for one invocation: limits, isolation, env and labels.
    pub fn config(
        &self,
        id: Uuid,
        function: &Snapshot,
        input: &[u8],
    ) -> Result<ContainerCreateBody, PlatformError> {
        let stdin = function.run.input == InputMode::Stdin;
        let cmd = match function.run.input {
            InputMode::Stdin => None,
            InputMode::Args => Some(args_from_input(input)?),
        };
        let deadline = Utc::now()
            .timestamp_millis()
            .saturating_add(function.run.timeout_ms);
        let mut env: Vec<String> = function
            .run
            .env
            .iter()
            .map(|(k, v)| (k, v.as_str()))
            // Opened by `Work::decode`: a sealed value is never passed on.
            .chain(function.secrets.clear_iter())
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.push(format!("GRANDA_INVOCATION_ID={id}"));
        env.push(format!("GRANDA_FUNCTION={}", function.name));
        env.push(format!("GRANDA_DEADLINE_MS={deadline}"));
        let mut labels = HashMap::from([
            (LABEL_INVOCATION.to_string(), id.to_string()),
            (LABEL_WORKER.to_string(), self.worker_id.clone()),
            (LABEL_FUNCTION.to_string(), function.name.clone()),
            (LABEL_DEADLINE.to_string(), deadline.to_string()),
        ]);
        if let Some(installation) = &self.installation {
            labels.insert(LABEL_INSTALLATION.to_string(), installation.clone());
        }
        let memory = function.run.memory_mb.saturating_mul(1024 * 1024);
        let network = function.run.network;
        Ok(ContainerCreateBody {
            image: Some(function.run.image.clone()),
            cmd,
            user: function.run_as(),
            env: Some(env),
            labels: Some(labels),
            attach_stdin: Some(stdin),
            open_stdin: Some(stdin),
            stdin_once: Some(stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            network_disabled: Some(network == Network::None),
            host_config: Some(HostConfig {
                network_mode: Some(network.as_str().to_string()),
                memory: Some(memory),
                memory_swap: Some(memory),
                nano_cpus: Some((function.run.cpus * 1e9) as i64),
                pids_limit: Some(function.run.pids),
                cap_drop: Some(vec!["ALL".to_string()]),
                security_opt: Some(vec!["no-new-privileges".to_string()]),
                readonly_rootfs: Some(true),
                tmpfs: Some(HashMap::from([(
                    "/tmp".to_string(),
                    format!("rw,nosuid,nodev,size={}m", function.run.tmp_mb),
                )])),
                privileged: Some(false),
                runtime: function.run.container_runtime.clone(),
                // Output is read over attach, under caps. The engine's own log driver would
                // keep all of it on the host's disk: a function printing gigabytes fills it.
                log_config: Some(HostConfigLogConfig {
                    typ: Some("none".to_string()),
                    config: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    async fn attach_start_wait(
        &self,
        container: &str,
        function: &Snapshot,
        input: &[u8],
    ) -> Result<Run, PlatformError> {
        let stdin = function.run.input == InputMode::Stdin;
        let attach = self
            .docker
            .attach_container(
                container,
                Some(
                    AttachContainerOptionsBuilder::new()
                        .stream(true)
                        .stdin(stdin)
                        .stdout(true)
                        .stderr(true)
                        .build(),
                ),
            )
            .await
            .map_err(PlatformError::Start)?;
        let collected = Arc::new(Mutex::new(Collected::default()));
        let collector = tokio::spawn(collect(attach.output, collected.clone(), self.caps));

        self.docker
            .start_container(
                container,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(PlatformError::Start)?;
        let started = Instant::now();
        let started_at = Utc::now();

        let mut writer = attach.input;
        if stdin {
            let input = input.to_vec();
            // The function may exit without reading its input: a broken pipe is no error.
            tokio::spawn(async move {
                let _ = writer.write_all(&input).await;
                let _ = writer.shutdown().await;
            });
        }

        let timeout = Duration::from_millis(function.run.timeout_ms.max(1) as u64);
        let mut wait = self.docker.wait_container(
            container,
            None::<bollard::query_parameters::WaitContainerOptions>,
        );
        let exit = match tokio::time::timeout(timeout, wait.next()).await {
            Ok(Some(Ok(done))) => Exit::Code(done.status_code),
            Ok(Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. }))) => {
                Exit::Code(code)
            }
            Ok(Some(Err(e))) => return Err(PlatformError::Engine(e)),
            Ok(None) => {
                return Err(PlatformError::Engine(
                    bollard::errors::Error::DockerStreamError {
                        error: "wait ended without a status".into(),
                    },
                ));
            }
            Err(_) => {
                let _ = self
                    .docker
                    .kill_container(
                        container,
                        Some(KillContainerOptionsBuilder::new().signal("KILL").build()),
                    )
                    .await;
                Exit::TimedOut
            }
        };
        let duration = started.elapsed();
        let finished_at = Utc::now();
        let drained = tokio::time::timeout(DRAIN_AFTER_EXIT, collector)
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                container,
                "output still open {DRAIN_AFTER_EXIT:?} after exit; keeping what was read, marked truncated"
            );
        }
        // A non-zero exit is the function's failure only if the engine is still there to say how
        // it ended: an engine going down kills its containers too.
        let oom_killed = match exit {
            Exit::Code(0) => false,
            // SIGKILL: the engine may record the OOM event a moment after the exit.
            Exit::Code(137) => self
                .oom_killed_settled(container)
                .await
                .map_err(PlatformError::Engine)?,
            _ => self
                .oom_killed(container)
                .await
                .map_err(PlatformError::Engine)?,
        };
        let collected = std::mem::take(&mut *collected.lock().expect("lock"));
        Ok(Run {
            exit,
            oom_killed,
            stdout: collected.stdout,
            // Never a silently shortened output: what was not drained is marked missing.
            stdout_truncated: collected.stdout_truncated || !drained,
            stderr: collected.stderr,
            stderr_truncated: collected.stderr_truncated || !drained,
            started_at,
            finished_at,
            duration,
        })
    }

    /// The engine's OOM flag after a SIGKILL that was not ours, asked again while it says no.
    ///
    /// The engine learns of the OOM kill from an event of its own that can arrive well after the
    /// exit on a busy host (over a second was seen), so it is asked for up to
    /// [`OOM_SETTLE`], more slowly as time passes. Only runs killed by SIGKILL pay this, and only
    /// those that were not out of memory pay all of it.
    async fn oom_killed_settled(&self, container: &str) -> Result<bool, bollard::errors::Error> {
        let deadline = tokio::time::Instant::now() + OOM_SETTLE;
        let mut pause = Duration::from_millis(50);
        loop {
            if self.oom_killed(container).await? {
                return Ok(true);
            }
            if tokio::time::Instant::now() + pause > deadline {
                return Ok(false);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    async fn oom_killed(&self, container: &str) -> Result<bool, bollard::errors::Error> {
        let inspected = self
            .docker
            .inspect_container(
                container,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await?;
        Ok(inspected.state.and_then(|s| s.oom_killed).unwrap_or(false))
    }
}

/// Force-removes a container (killing it if it still runs); a missing one is fine. An engine
/// that is away (restarting) is asked again for a few minutes before the reaper is left to it.
pub async fn remove(docker: &Docker, container: &str) {
    // With its anonymous volumes (`v`): nothing of a run stays on the host's disk.
    let options = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    let mut backoff = Duration::from_millis(250);
    let give_up = Instant::now() + Duration::from_secs(180);
    loop {
        match docker
            .remove_container(container, Some(options.clone()))
            .await
        {
            Ok(()) => return,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return,
            Err(e) if Instant::now() > give_up => {
                tracing::warn!(%container, error = %e, "container could not be removed; the reaper will");
                return;
            }
            Err(e) => {
                tracing::debug!(%container, error = %e, "container not removed yet; asking again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The log driver of an invocation's own container: the engine keeps its output too (bounded:
/// one file of four times the output caps, rotated over, never a second), so that if its worker
/// dies before recording the run, a survivor collects the result from the engine instead of
/// running it again (`super::dead_run`). The worker itself reads the output over attach, as
/// ever; the file goes with the container. The `local` driver keeps the bytes as written (no
/// newline added, binary kept). Kept (warm and hot) containers log nothing ([`Runner::config`]).
pub(crate) fn kept_output(caps: Caps) -> HostConfigLogConfig {
    let size = caps
        .stdout
        .saturating_add(caps.stderr)
        .saturating_mul(4)
        .max(1024 * 1024);
    HostConfigLogConfig {
        typ: Some("local".to_string()),
        config: Some(HashMap::from([
            ("max-size".to_string(), size.to_string()),
            ("max-file".to_string(), "1".to_string()),
            ("compress".to_string(), "false".to_string()),
        ])),
    }
}

/// Mounts each of the image's `VOLUME`s as a tmpfs of `tmp_mb` (like `/tmp`) instead of the
/// anonymous volume the engine would make on the host's disk: a function's writes stay within
/// its memory limit (tmpfs pages count against it) and go with the container. Each is mounted at
/// its normalised path ([`crate::docker::volume_mount`]), the one the engine looks for. An image
/// with a `VOLUME` that can't be one ([`crate::docker::volume_mounts`]; refused at registration,
/// but an image may change under its tag) is not run.
fn cap_volumes(
    config: &mut ContainerCreateBody,
    image: &str,
    volumes: &[String],
    tmp_mb: i64,
) -> Result<(), PlatformError> {
    let mounts = crate::docker::volume_mounts(volumes).map_err(|(volume, why)| {
        PlatformError::Volume(crate::docker::volume_refusal(image, volume, why))
    })?;
    let host = config.host_config.get_or_insert_with(Default::default);
    let tmpfs = host.tmpfs.get_or_insert_with(HashMap::new);
    for path in mounts {
        tmpfs
            .entry(path)
            .or_insert_with(|| format!("rw,nosuid,nodev,size={tmp_mb}m"));
    }
    Ok(())
}

/// Removes a created container when dropped armed: a run that panics still leaves nothing.
struct RemoveOnDrop {
    docker: Docker,
    container: Option<String>,
}

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.container = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(container) = self.container.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let docker = self.docker.clone();
            runtime.spawn(async move { remove(&docker, &container).await });
        }
    }
}

/// The body of an `args` invocation: a JSON array of strings, or else the whole body as one string.
pub(crate) fn args_from_input(input: &[u8]) -> Result<Vec<String>, PlatformError> {
    if let Ok(args) = serde_json::from_slice::<Vec<String>>(input) {
        return Ok(args);
    }
    match std::str::from_utf8(input) {
        Ok(s) if s.trim_start().starts_with('[') => Err(PlatformError::BadArgs(
            "a JSON array must hold only strings".into(),
        )),
        Ok(s) if s.contains('\0') => Err(PlatformError::BadArgs("NUL in argument".into())),
        Ok(s) => Ok(vec![s.to_string()]),
        Err(_) => Err(PlatformError::BadArgs("args must be UTF-8".into())),
    }
}

#[derive(Default)]
struct Collected {
    stdout: Vec<u8>,
    stdout_truncated: bool,
    stderr: Vec<u8>,
    stderr_truncated: bool,
}

/// Reads the attach stream to its end, keeping at most `caps` of each stream.
async fn collect(
    mut output: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>,
    >,
    into: Arc<Mutex<Collected>>,
    caps: Caps,
) {
    while let Some(Ok(chunk)) = output.next().await {
        let mut c = into.lock().expect("lock");
        let c = &mut *c;
        match chunk {
            LogOutput::StdOut { message } | LogOutput::Console { message } => keep(
                &mut c.stdout,
                &mut c.stdout_truncated,
                caps.stdout,
                &message,
            ),
            LogOutput::StdErr { message } => keep(
                &mut c.stderr,
                &mut c.stderr_truncated,
                caps.stderr,
                &message,
            ),
            LogOutput::StdIn { .. } => {}
        }
    }
}

pub(super) fn keep(buf: &mut Vec<u8>, truncated: &mut bool, cap: usize, message: &[u8]) {
    let room = cap.saturating_sub(buf.len());
    if message.len() > room {
        *truncated = true;
    }
    buf.extend_from_slice(&message[..message.len().min(room)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_come_from_a_json_array_or_the_whole_body() {
        assert_eq!(
            args_from_input(br#"["a","b c"]"#).unwrap(),
            vec!["a", "b c"]
        );
        assert_eq!(
            args_from_input(b"hello world").unwrap(),
            vec!["hello world"]
        );
        assert!(args_from_input(b"[1,2]").is_err());
        assert!(args_from_input(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn output_past_the_cap_is_dropped_and_marked() {
        let (mut buf, mut truncated) = (Vec::new(), false);
        keep(&mut buf, &mut truncated, 5, b"abc");
        assert!(!truncated);
        keep(&mut buf, &mut truncated, 5, b"defg");
        assert_eq!(buf, b"abcde");
        assert!(truncated);
    }
}
