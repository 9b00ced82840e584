//! Kept containers (warm and hot modes): starting one with the function's limits and the
//! worker's idle binary, and running a warm call in it as an exec.

use super::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use crate::docker::{LABEL_DEADLINE, LABEL_INVOCATION, LABEL_POOL};
use crate::function::{InputMode, Snapshot};

impl Runner {
    /// Starts a container for warm runs of `function`: the function's limits and isolation, with
    /// the worker's idle binary (mounted read-only from `idle_binary`) as its only process.
    #[tracing::instrument(skip_all, fields(function = %function.name))]
    /// `journal`: a directory of its own, mounted at [`JOURNAL_DIR`], where each warm run keeps
    /// its journal ([`Runner::exec`] with `journaled`).
    pub async fn start_warm(
        &self,
        function: &Snapshot,
        idle_binary: &str,
        journal: Option<&std::path::Path>,
    ) -> Result<String, PlatformError> {
        let mut binds = vec![format!("{idle_binary}:{IDLE_PATH}:ro")];
        if let Some(journal) = journal {
            binds.push(format!("{}:{JOURNAL_DIR}", journal.display()));
        }
        self.start_kept(
            function,
            Kept {
                pool: "warm",
                entrypoint: Some(vec![IDLE_PATH.to_string()]),
                binds,
                env: vec![],
            },
        )
        .await
    }

    /// Starts a container for hot runs of `function`: its image's own entrypoint and command,
    /// with `socket_dir` mounted at `crate::worker::hot::SOCKET_DIR` and `GRANDA_SOCKET` pointing there;
    /// `journal`, a directory of its own, at [`JOURNAL_DIR`] with `GRANDA_JOURNAL` pointing there,
    /// where the process may keep its answers ([`crate::worker::hot`]).
    #[tracing::instrument(skip_all, fields(function = %function.name))]
    pub async fn start_hot(
        &self,
        function: &Snapshot,
        socket_dir: &std::path::Path,
        journal: Option<&std::path::Path>,
    ) -> Result<String, PlatformError> {
        let mut binds = vec![format!(
            "{}:{}",
            socket_dir.display(),
            crate::worker::hot::SOCKET_DIR
        )];
        let mut env = vec![format!("GRANDA_SOCKET={}", crate::worker::hot::SOCKET_PATH)];
        if let Some(journal) = journal {
            binds.push(format!("{}:{JOURNAL_DIR}", journal.display()));
            env.push(format!("GRANDA_JOURNAL={JOURNAL_DIR}"));
        }
        self.start_kept(
            function,
            Kept {
                pool: "hot",
                entrypoint: None,
                binds,
                env,
            },
        )
        .await
    }

    /// A container that outlives its invocations: no invocation, no deadline, no per-invocation
    /// env (`GRANDA_*` but the function's name), nothing attached.
    pub(super) async fn start_kept(
        &self,
        function: &Snapshot,
        kept: Kept,
    ) -> Result<String, PlatformError> {
        let mut function = function.clone();
        function.run.input = InputMode::Stdin;
        let image = self.image_command(&function.run.image).await?;
        let mut config = self.config(Uuid::nil(), &function, b"")?;
        cap_volumes(
            &mut config,
            &function.run.image,
            &image.volumes,
            function.run.tmp_mb,
        )?;
        config.entrypoint = kept.entrypoint;
        config.cmd = if config.entrypoint.is_some() {
            Some(vec![])
        } else {
            None
        };
        config.open_stdin = Some(false);
        config.stdin_once = Some(false);
        config.attach_stdin = Some(false);
        config.attach_stdout = Some(false);
        config.attach_stderr = Some(false);
        if let Some(env) = config.env.as_mut() {
            env.retain(|e| !e.starts_with("GRANDA_") || e.starts_with("GRANDA_FUNCTION="));
            env.extend(kept.env);
        }
        if let Some(labels) = config.labels.as_mut() {
            labels.remove(LABEL_DEADLINE);
            labels.remove(LABEL_INVOCATION);
            labels.insert(LABEL_POOL.to_string(), kept.pool.to_string());
        }
        if let Some(host) = config.host_config.as_mut() {
            host.binds = Some(kept.binds);
        }
        let created = self
            .docker
            .create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                config,
            )
            .await
            .map_err(PlatformError::Create)?;
        if let Err(e) = self
            .docker
            .start_container(
                &created.id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
        {
            remove(&self.docker, &created.id).await;
            return Err(PlatformError::Start(e));
        }
        Ok(created.id)
    }

    /// Who a hot container of `function` runs as: its `user`, or else its image's.
    pub async fn hot_owner(
        &self,
        function: &Snapshot,
    ) -> Result<crate::worker::hot::Owner, PlatformError> {
        let user = match function.run_as() {
            Some(user) => Some(user),
            None => self.image_command(&function.run.image).await?.user,
        };
        crate::worker::hot::Owner::of(user.as_deref()).map_err(PlatformError::NotReady)
    }

    pub(super) async fn image_command(&self, image: &str) -> Result<ImageCommand, PlatformError> {
        if let Some(c) = self.commands.lock().expect("lock").get(image)
            && c.inspected.elapsed() < IMAGE_TTL
        {
            return Ok(c.clone());
        }
        let inspected = self
            .docker
            .inspect_image(image)
            .await
            .map_err(PlatformError::Create)?;
        let config = inspected.config.unwrap_or_default();
        let command = ImageCommand {
            entrypoint: config.entrypoint.unwrap_or_default(),
            cmd: config.cmd.unwrap_or_default(),
            working_dir: config.working_dir.filter(|w| !w.is_empty()),
            user: config.user.filter(|u| !u.is_empty()),
            volumes: config.volumes.unwrap_or_default(),
            inspected: Instant::now(),
        };
        self.commands
            .lock()
            .expect("lock")
            .insert(image.to_string(), command.clone());
        Ok(command)
    }

    /// Runs invocation `id` as an exec of the image's own entrypoint and command in the kept
    /// `container`, with the same stdin/args/env contract, timeout and output caps as a cold run.
    /// After a timeout the container must be discarded: the exec can't be stopped on its own.
    /// `journaled` (the container has a [`JOURNAL_DIR`]): the command runs under the idle
    /// binary's `run`, which passes its output through and keeps a journal of the run there
    /// (within the caps), read only if this worker dies ([`crate::worker::dead_run`]).
    #[tracing::instrument(skip_all, fields(%id, function = %function.name))]
    pub(crate) async fn exec(
        &self,
        container: &str,
        journaled: bool,
        id: Uuid,
        function: &Snapshot,
        input: &[u8],
    ) -> Result<Run, PlatformError> {
        let image = self.image_command(&function.run.image).await?;
        let stdin = function.run.input == InputMode::Stdin;
        let mut cmd = image.entrypoint.clone();
        match function.run.input {
            InputMode::Stdin => cmd.extend(image.cmd.iter().cloned()),
            InputMode::Args => cmd.extend(args_from_input(input)?),
        }
        if cmd.is_empty() {
            return Err(PlatformError::BadArgs(
                "the image has neither an entrypoint nor a command to run".into(),
            ));
        }
        if journaled {
            let wrapper = [
                IDLE_PATH.to_string(),
                "run".to_string(),
                JOURNAL_DIR.to_string(),
                self.caps.stdout.to_string(),
                self.caps.stderr.to_string(),
                id.to_string(),
                "--".to_string(),
            ];
            cmd.splice(0..0, wrapper);
        }
        let config = self.config(id, function, input)?;
        let exec = self
            .docker
            .create_exec(
                container,
                bollard::exec::CreateExecOptions {
                    attach_stdin: Some(stdin),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    env: config.env,
                    cmd: Some(cmd),
                    working_dir: image.working_dir,
                    // The function's user (a lone uid as uid:uid), as its container's own process
                    // (and a cold run) has it; unset, the engine uses the container's, the image's.
                    user: function.run_as(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| match e {
                // The engine's own check that the container still runs, made by the exec itself.
                bollard::errors::Error::DockerResponseServerError {
                    status_code: 404 | 409,
                    ..
                } => PlatformError::Gone(e),
                e => PlatformError::Start(e),
            })?;
        let started_at = Utc::now();
        let started = Instant::now();
        let attached = self
            .docker
            .start_exec(&exec.id, None)
            .await
            .map_err(PlatformError::Start)?;
        let bollard::exec::StartExecResults::Attached {
            output,
            input: mut writer,
        } = attached
        else {
            return Err(PlatformError::Engine(
                bollard::errors::Error::DockerStreamError {
                    error: "exec started detached".into(),
                },
            ));
        };
        if stdin {
            let input = input.to_vec();
            tokio::spawn(async move {
                let _ = writer.write_all(&input).await;
                let _ = writer.shutdown().await;
            });
        }
        let collected = Arc::new(Mutex::new(Collected::default()));
        let timeout = Duration::from_millis(function.run.timeout_ms.max(1) as u64);
        let finished =
            tokio::time::timeout(timeout, collect(output, collected.clone(), self.caps)).await;
        let duration = started.elapsed();
        let exit = match finished {
            Err(_) => Exit::TimedOut,
            Ok(()) => {
                let inspected = self
                    .docker
                    .inspect_exec(&exec.id)
                    .await
                    .map_err(PlatformError::Engine)?;
                Exit::Code(inspected.exit_code.unwrap_or(-1))
            }
        };
        let collected = std::mem::take(&mut *collected.lock().expect("lock"));
        Ok(Run {
            exit,
            oom_killed: false,
            stdout: collected.stdout,
            stdout_truncated: collected.stdout_truncated,
            stderr: collected.stderr,
            stderr_truncated: collected.stderr_truncated,
            started_at,
            finished_at: Utc::now(),
            duration,
        })
    }
}
