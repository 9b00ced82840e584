//! A dead worker's warm and hot runs, read from their journals: what a warm run's wrapper and a
//! hot process (`granda_hot`) wrote into the container's `/granda/journal` before the worker
//! died, fetched through the engine's archive API so that it works on a remote engine too.

use super::*;

/// The dead worker's hot pool containers, for an answer to `id` their process journaled
/// (`/granda/journal/<id>`, [`hot::JournalEntry`]), into `found`. One answered is the run that
/// ended. With none (a call still going, or a process that does not journal), the dead worker's
/// hot processes are killed, so that the call can't go on beside its next run (their lease is
/// over: nobody sends them a request again), and their journals read once more, since the call
/// may have ended in between; still none: the call goes again. The containers, stopped, are left
/// to the sweep, which settles what their journals hold and removes them.
pub(super) async fn examine_hot(
    docker: &Docker,
    labels: &[&str; 2],
    id: Uuid,
    caps: crate::worker::container::Caps,
    found: &mut Found,
) {
    let containers = pool_containers(docker, labels, "hot").await;
    for (container, _) in &containers {
        if let Ok(Some(entry)) = read_hot_entry(docker, container, id, caps).await {
            found.hot = Some(entry);
            return;
        }
    }
    for (container, _) in &containers {
        let _ = kill(docker, container).await;
    }
    for (container, _) in &containers {
        if let Ok(Some(entry)) = read_hot_entry(docker, container, id, caps).await {
            found.hot = Some(entry);
            return;
        }
    }
}

/// A hot container's journaled answer to `id`, through the engine's archive API (`None`: none).
pub(super) async fn read_hot_entry(
    docker: &Docker,
    container: &str,
    id: Uuid,
    caps: crate::worker::container::Caps,
) -> Result<Option<hot::JournalEntry>, bollard::errors::Error> {
    use std::io::Read;
    let path = format!("{JOURNAL_DIR}/{id}");
    let limit = caps.stdout + 128 * 1024;
    let tar = match download(docker, container, &path, limit).await {
        Ok(tar) => tar,
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let unreadable = |e: std::io::Error| bollard::errors::Error::DockerStreamError {
        error: format!("an unreadable journal: {e}"),
    };
    let mut archive = tar::Archive::new(tar.as_slice());
    for entry in archive.entries().map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let mut bytes = vec![];
        entry
            .take(limit as u64)
            .read_to_end(&mut bytes)
            .map_err(unreadable)?;
        return Ok(hot::JournalEntry::parse(&bytes, caps.stdout));
    }
    Ok(None)
}

/// The ids a hot container's journal holds answers to (its file names).
pub(super) async fn hot_journal_ids(
    docker: &Docker,
    container: &str,
    caps: crate::worker::container::Caps,
) -> Result<Vec<Uuid>, bollard::errors::Error> {
    let limit = (caps.stdout + 128 * 1024) * (hot::JOURNAL_KEPT as usize + 2);
    let tar = download(docker, container, JOURNAL_DIR, limit).await?;
    let mut ids = vec![];
    let mut archive = tar::Archive::new(tar.as_slice());
    if let Ok(entries) = archive.entries() {
        for entry in entries.flatten() {
            let name = entry
                .path()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
            if let Some(id) = name.and_then(|n| Uuid::parse_str(&n).ok()) {
                ids.push(id);
            }
        }
    }
    Ok(ids)
}

/// `path` in `container`, as the engine's archive API gives it (a tar), of at most `limit` bytes.
pub(super) async fn download(
    docker: &Docker,
    container: &str,
    path: &str,
    limit: usize,
) -> Result<Vec<u8>, bollard::errors::Error> {
    use bollard::query_parameters::DownloadFromContainerOptionsBuilder;
    let options = DownloadFromContainerOptionsBuilder::new()
        .path(path)
        .build();
    let mut archive = docker.download_from_container(container, Some(options));
    let mut tar = vec![];
    while let Some(chunk) = archive.next().await {
        tar.extend_from_slice(&chunk?);
        if tar.len() > limit {
            return Err(bollard::errors::Error::DockerStreamError {
                error: "a journal larger than its caps".into(),
            });
        }
    }
    Ok(tar)
}

/// The dead worker's (`labels`) pool containers of `mode` (`warm` or `hot`).
async fn pool_containers(
    docker: &Docker,
    labels: &[&str; 2],
    mode: &str,
) -> Vec<(String, std::collections::HashMap<String, String>)> {
    let pool = format!("{LABEL_POOL}={mode}");
    reaper::list(docker, &[labels[0], labels[1], pool.as_str()]).await
}

/// The dead worker's warm pool containers whose journal names `id`, into `found`: a run whose
/// journal has its end is the run that ended; one still going is stopped with its container
/// (which is looked at again once killed: a run that ended meanwhile is the run that ended).
/// A container whose journal can't be read is left alone (the sweep removes it).
pub(super) async fn examine_warm(
    docker: &Docker,
    labels: &[&str; 2],
    id: Uuid,
    caps: crate::worker::container::Caps,
    found: &mut Found,
) {
    for (container, _) in pool_containers(docker, labels, "warm").await {
        let Ok(mut journal) = read_journal(docker, &container, caps).await else {
            continue;
        };
        if !journal.names(id) {
            continue;
        }
        found.containers.push(container.clone());
        if !journal.ended(id) {
            let _ = kill(docker, &container).await;
            match read_journal(docker, &container, caps).await {
                Ok(now) if now.ended(id) => journal = now,
                _ => {
                    found.stopped += 1;
                    continue;
                }
            }
        }
        if found.ended.is_some() {
            continue;
        }
        if let Some(run) = journal.run() {
            found.ended = Some((run, None));
            found.mode = Mode::Warm;
        }
    }
}

/// What the idle binary's `run` kept of the last warm run in a pool container
/// ([`JOURNAL_DIR`]): the invocation it runs or ran, its output so far, and its end once it
/// ended.
#[derive(Default, Debug)]
pub(super) struct Journal {
    pub(super) run: Option<Uuid>,
    pub(super) out: Vec<u8>,
    pub(super) err: Vec<u8>,
    pub(super) end: Option<JournalEnd>,
}

#[derive(Debug, PartialEq)]
pub(super) struct JournalEnd {
    pub(super) id: Uuid,
    pub(super) code: i64,
    pub(super) started_ms: i64,
    pub(super) finished_ms: i64,
    pub(super) out_cut: bool,
    pub(super) err_cut: bool,
}

impl JournalEnd {
    /// `ID CODE STARTED_MS FINISHED_MS OUT_CUT ERR_CUT`.
    pub(super) fn parse(line: &str) -> Option<JournalEnd> {
        let mut f = line.split_ascii_whitespace();
        let end = JournalEnd {
            id: Uuid::parse_str(f.next()?).ok()?,
            code: f.next()?.parse().ok()?,
            started_ms: f.next()?.parse().ok()?,
            finished_ms: f.next()?.parse().ok()?,
            out_cut: f.next()? == "1",
            err_cut: f.next()? == "1",
        };
        Some(end)
    }
}

impl Journal {
    pub(super) fn names(&self, id: Uuid) -> bool {
        self.run == Some(id) || self.ended(id)
    }

    pub(super) fn ended(&self, id: Uuid) -> bool {
        self.end.as_ref().is_some_and(|e| e.id == id)
    }

    /// The run that ended, as a container's [`Run`].
    pub(super) fn run(self) -> Option<Run> {
        let end = self.end?;
        let started_at = DateTime::from_timestamp_millis(end.started_ms)?;
        let finished_at = DateTime::from_timestamp_millis(end.finished_ms)?.max(started_at);
        Some(Run {
            exit: Exit::Code(end.code),
            oom_killed: false,
            stdout: self.out,
            stdout_truncated: end.out_cut,
            stderr: self.err,
            stderr_truncated: end.err_cut,
            started_at,
            finished_at,
            duration: (finished_at - started_at).to_std().unwrap_or_default(),
        })
    }

    /// The journal from the files of its directory's archive.
    pub(super) fn from_archive(
        tar: &[u8],
        caps: crate::worker::container::Caps,
    ) -> std::io::Result<Journal> {
        use std::io::Read;
        let mut journal = Journal::default();
        let mut archive = tar::Archive::new(tar);
        for entry in archive.entries()? {
            let entry = entry?;
            let name = entry
                .path()?
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let cap = match name.as_str() {
                "out" => caps.stdout,
                "err" => caps.stderr,
                _ => 256,
            };
            let mut bytes = vec![];
            entry.take(cap as u64).read_to_end(&mut bytes)?;
            match name.as_str() {
                "run" => journal.run = Uuid::parse_str(String::from_utf8_lossy(&bytes).trim()).ok(),
                "end" => journal.end = JournalEnd::parse(&String::from_utf8_lossy(&bytes)),
                "out" => journal.out = bytes,
                "err" => journal.err = bytes,
                _ => {}
            }
        }
        Ok(journal)
    }
}

/// A pool container's journal, through the engine's archive API (a remote engine's too).
pub(super) async fn read_journal(
    docker: &Docker,
    container: &str,
    caps: crate::worker::container::Caps,
) -> Result<Journal, bollard::errors::Error> {
    use bollard::query_parameters::DownloadFromContainerOptionsBuilder;
    let options = DownloadFromContainerOptionsBuilder::new()
        .path(JOURNAL_DIR)
        .build();
    let mut archive = docker.download_from_container(container, Some(options));
    // The files within their caps, and the archive's own headers and padding.
    let limit = caps.stdout + caps.stderr + 64 * 1024;
    let mut tar = vec![];
    while let Some(chunk) = archive.next().await {
        tar.extend_from_slice(&chunk?);
        if tar.len() > limit {
            return Err(bollard::errors::Error::DockerStreamError {
                error: "a journal larger than its caps".into(),
            });
        }
    }
    Journal::from_archive(&tar, caps).map_err(|e| bollard::errors::Error::DockerStreamError {
        error: format!("an unreadable journal: {e}"),
    })
}

/// How a container that exited with `code` at `finished_ms` ended: a SIGKILL at or past its
/// invocation's deadline was its worker's timeout kill (the worker died before recording it).
pub(super) fn exit_of(code: i64, finished_ms: i64, deadline: Option<i64>) -> Exit {
    match deadline {
        Some(deadline) if code == 137 && finished_ms >= deadline => Exit::TimedOut,
        _ => Exit::Code(code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut tar = tar::Builder::new(vec![]);
        for (name, bytes) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o600);
            header.set_cksum();
            tar.append_data(&mut header, format!("journal/{name}"), *bytes)
                .unwrap();
        }
        tar.into_inner().unwrap()
    }

    const CAPS: crate::worker::container::Caps = crate::worker::container::Caps {
        stdout: 4,
        stderr: 100,
    };

    #[test]
    fn an_ended_warm_run_is_read_from_its_journal() {
        let id = Uuid::new_v4();
        let end = format!("{id} 3 1796502028000 1796502029500 1 0\n");
        let tar = archive(&[
            ("run", id.to_string().as_bytes()),
            ("out", b"hello"),
            ("err", b"oops\n"),
            ("end", end.as_bytes()),
        ]);
        let journal = Journal::from_archive(&tar, CAPS).unwrap();
        assert!(journal.names(id) && journal.ended(id));
        assert!(!journal.names(Uuid::new_v4()));
        let run = journal.run().unwrap();
        assert_eq!(run.exit, Exit::Code(3));
        // Kept within the caps, as the run itself kept it.
        assert_eq!(run.stdout, b"hell");
        assert!(run.stdout_truncated && !run.stderr_truncated);
        assert_eq!(run.stderr, b"oops\n");
        assert_eq!(run.duration, Duration::from_millis(1_500));
    }

    #[test]
    fn a_warm_run_still_going_has_no_end_and_an_earlier_end_is_not_its_own() {
        let (id, before) = (Uuid::new_v4(), Uuid::new_v4());
        let end = format!("{before} 0 1 2 0 0\n");
        let going = Journal::from_archive(
            &archive(&[("run", id.to_string().as_bytes()), ("end", end.as_bytes())]),
            CAPS,
        )
        .unwrap();
        assert!(going.names(id) && !going.ended(id));
        assert!(going.ended(before));
        assert!(JournalEnd::parse("garbage 1 2").is_none());
    }

    #[test]
    fn a_journaled_hot_answer_is_read_with_its_headers_and_its_body_within_the_cap() {
        let entry = hot::JournalEntry::parse(
            b"201 1796502028000 1796502029500\nX-Kind: test\nBad: \x01\n\nhello\nworld",
            8,
        )
        .unwrap();
        assert_eq!(
            (entry.started_ms, entry.finished_ms),
            (1_796_502_028_000, 1_796_502_029_500)
        );
        assert_eq!(entry.answer.status, 201);
        assert_eq!(
            entry.answer.headers,
            vec![("x-kind".to_string(), "test".to_string())]
        );
        assert_eq!(entry.answer.body, b"hello\nwo");
        assert!(entry.answer.truncated);
        // Not an answer: no status line, or no end of the headers.
        assert!(hot::JournalEntry::parse(b"garbage\n\nbody", 8).is_none());
        assert!(hot::JournalEntry::parse(b"200 1 2\nX: y\n", 8).is_none());
        let empty = hot::JournalEntry::parse(b"500 5 4\n\n", 8).unwrap();
        assert_eq!((empty.answer.status, empty.finished_ms), (500, 5));
        assert!(empty.answer.body.is_empty() && !empty.answer.truncated);
    }

    #[test]
    fn a_sigkill_at_the_deadline_was_a_timeout_and_any_other_end_its_exit_code() {
        assert_eq!(exit_of(137, 5_000, Some(5_000)), Exit::TimedOut);
        assert_eq!(exit_of(137, 4_999, Some(5_000)), Exit::Code(137));
        assert_eq!(exit_of(0, 9_000, Some(5_000)), Exit::Code(0));
        assert_eq!(exit_of(3, 1_000, None), Exit::Code(3));
        assert_eq!(exit_of(137, 9_000, None), Exit::Code(137));
    }
}
