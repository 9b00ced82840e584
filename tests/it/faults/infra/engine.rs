//! A private Docker engine ([`TestDocker`]) with the test images loaded from a cache.

#![allow(dead_code)]

use super::*;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A second Docker engine: its own `dockerd` (and the containerd it starts) with its own socket,
/// data root, exec root, pid file, containerd namespaces and cgroup parent, all in
/// `/tmp/granda-fault-docker-<hex>`; `--bridge=none --iptables=false --ip-masq=false`, so it
/// touches no network setting of the machine (containers get `--network none`, as Granda's do).
///
/// It has the test images `granda-test/*` (at least [`REQUIRED_IMAGES`]). Building them takes about
/// 10 s, so the first start saves them to `/var/tmp/granda-test-docker/images-<key>.tar`, where
/// `key` hashes `tests/images/`, the build script and the busybox binary; later starts
/// `docker load` that archive (< 1 s). A stale archive is never used (the key changes), and
/// `GRANDA_TEST_DOCKER_IMAGE_CACHE=off` builds every time. The data root itself is never shared.
///
/// [`restart`](Self::restart) stops the daemon with SIGTERM, as a service manager would: without
/// live-restore, running containers are stopped too (each gets its stop timeout, 10 s by default,
/// before SIGKILL). `Drop` removes all containers, stops the daemon, unmounts what is left under
/// the directory and removes it.
pub struct TestDocker {
    dir: PathBuf,
    daemon: Mutex<Option<Child>>,
}

impl TestDocker {
    /// Starts the engine, waits for it to answer, and loads (or builds) the test images.
    pub async fn start() -> TestDocker {
        let began = Instant::now();
        let dir = scratch_dir("docker");
        fs::write(dir.join("daemon.json"), "{}\n").unwrap();
        let docker = TestDocker {
            dir,
            daemon: Mutex::new(None),
        };
        docker.spawn_daemon();
        docker.wait_ready(Duration::from_secs(60)).await;
        let daemon_up = began.elapsed();
        let images = Instant::now();
        docker.load_images().await;
        eprintln!(
            "TestDocker {} started in {} (daemon {}, images {})",
            docker.host(),
            secs(began.elapsed()),
            secs(daemon_up),
            secs(images.elapsed())
        );
        docker
    }

    /// `unix:///tmp/granda-fault-docker-<hex>/docker.sock`: Granda's `docker_host` setting, or
    /// `DOCKER_HOST` for a `granda` process or the docker CLI.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// A bollard client for this engine (120 s timeout per call).
    pub fn client(&self) -> bollard::Docker {
        granda::docker::connect(Some(&self.host()), 120).expect("bollard client")
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.daemon_log()).unwrap_or_default()
    }

    /// The daemon's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        let mut daemon = self.daemon.lock().unwrap();
        let child = daemon.as_mut()?;
        match child.try_wait() {
            Ok(None) => Some(child.id()),
            _ => None,
        }
    }

    /// SIGTERMs the daemon and waits for it to exit (it stops running containers first); then
    /// starts it again with the same arguments and waits until it answers.
    pub async fn restart(&self) {
        let began = Instant::now();
        self.stop().await;
        self.start_again().await;
        eprintln!("TestDocker restarted in {}", secs(began.elapsed()));
    }

    /// SIGTERMs the daemon and returns once it has exited (SIGKILL after 60 s).
    pub async fn stop(&self) {
        let began = Instant::now();
        let Some(mut child) = self.daemon.lock().unwrap().take() else {
            return;
        };
        let status = blocking(move || stop_child(&mut child, Duration::from_secs(60))).await;
        eprintln!(
            "TestDocker stopped in {} ({status:?})",
            secs(began.elapsed())
        );
    }

    /// Starts the daemon again on the same data; returns once it answers. Does nothing when it runs.
    pub async fn start_again(&self) {
        if self.pid().is_some() {
            return;
        }
        let began = Instant::now();
        self.spawn_daemon();
        self.wait_ready(Duration::from_secs(60)).await;
        eprintln!("TestDocker started again in {}", secs(began.elapsed()));
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    fn daemon_log(&self) -> PathBuf {
        self.dir.join("dockerd.log")
    }

    fn spawn_daemon(&self) {
        let d = &self.dir;
        let tag = dir_tag(d);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.daemon_log())
            .unwrap();
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--host")
            .arg(self.host())
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .arg(format!("--containerd-namespace=granda-fault-{tag}"))
            .arg(format!(
                "--containerd-plugins-namespace=granda-fault-{tag}-plugins"
            ))
            .arg(format!("--cgroup-parent=/granda-fault-docker-{tag}"))
            .args(["--bridge=none", "--iptables=false", "--ip-masq=false"])
            .args(["--log-level=warn"])
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group: a Ctrl-C meant for the test is not what stops it.
            .process_group(0)
            .spawn()
            .expect("starting dockerd (apt-get install docker.io)");
        *self.daemon.lock().unwrap() = Some(child);
    }

    /// Waits until `docker info` answers; panics with the daemon's log if it exits or after `within`.
    async fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            // bollard wants the socket to exist before it makes a client.
            if let Ok(client) = granda::docker::connect(Some(&self.host()), 5)
                && let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), client.info()).await
            {
                return;
            }
            let exited = self
                .daemon
                .lock()
                .unwrap()
                .as_mut()
                .map(|c| c.try_wait().ok().flatten());
            if let Some(Some(status)) = exited {
                panic!(
                    "dockerd exited ({status}):\n{}",
                    tail(&self.daemon_log(), 40)
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "dockerd at {} does not answer after {within:?}:\n{}",
                    self.host(),
                    tail(&self.daemon_log(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Loads the test images from the cache, or builds them (and fills the cache).
    async fn load_images(&self) {
        let host = self.host();
        let log = self.dir.join("commands.log");
        let use_cache = std::env::var("GRANDA_TEST_DOCKER_IMAGE_CACHE").as_deref() != Ok("off");
        let archive = Path::new(IMAGE_CACHE_DIR).join(format!("images-{}.tar", image_cache_key()));
        if use_cache && archive.exists() {
            let (h, l, a) = (host.clone(), log.clone(), archive.clone());
            let loaded = blocking(move || {
                run_logged(
                    Command::new("docker")
                        .env("DOCKER_HOST", &h)
                        .args(["load", "-q", "-i"])
                        .arg(&a),
                    &l,
                )
            })
            .await;
            if loaded && self.missing_images().await.is_empty() {
                return;
            }
            eprintln!(
                "TestDocker: the image cache {} is unusable",
                archive.display()
            );
            let _ = fs::remove_file(&archive);
        }
        let (h, l) = (host.clone(), log.clone());
        blocking(move || {
            run_or_panic(
                Command::new("bash")
                    .arg("scripts/build-test-images.sh")
                    .arg("--quiet")
                    .env("DOCKER_HOST", &h)
                    .current_dir(env!("CARGO_MANIFEST_DIR")),
                &l,
                "scripts/build-test-images.sh",
            )
        })
        .await;
        let missing = self.missing_images().await;
        assert!(
            missing.is_empty(),
            "images missing after the build: {missing:?}"
        );
        if use_cache {
            let names = self.test_images().await;
            blocking(move || {
                let _ = fs::create_dir_all(IMAGE_CACHE_DIR);
                // Written aside, then renamed: a concurrent start never reads half an archive.
                let partial = archive.with_extension(format!("{}.partial", std::process::id()));
                let saved = run_logged(
                    Command::new("docker")
                        .env("DOCKER_HOST", &host)
                        .args(["save", "-o"])
                        .arg(&partial)
                        .args(&names),
                    &log,
                );
                if !(saved && fs::rename(&partial, &archive).is_ok()) {
                    let _ = fs::remove_file(&partial);
                }
            })
            .await;
        }
    }

    /// Tags `granda-test/*:latest` on this engine.
    pub async fn test_images(&self) -> Vec<String> {
        let images = self
            .client()
            .list_images(None::<bollard::query_parameters::ListImagesOptions>)
            .await
            .expect("listing images");
        let mut names: Vec<String> = images
            .into_iter()
            .flat_map(|i| i.repo_tags)
            .filter(|t| t.starts_with("granda-test/") && t.ends_with(":latest"))
            .collect();
        names.sort();
        names
    }

    /// Which of [`REQUIRED_IMAGES`] this engine lacks.
    pub async fn missing_images(&self) -> Vec<&'static str> {
        let have = self.test_images().await;
        REQUIRED_IMAGES
            .into_iter()
            .filter(|name| !have.contains(&format!("{name}:latest")))
            .collect()
    }
}

impl Drop for TestDocker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- TestDocker log (tail) ---\n{}",
                tail(&self.daemon_log(), 30)
            );
        }
        let child = self.daemon.lock().map(|mut d| d.take()).unwrap_or(None);
        teardown_docker(&self.dir, child);
        remove_dir(&self.dir);
    }
}

/// SIGTERMs `child`, waits up to `within` for it to exit, then SIGKILLs it; reaps it.
pub(crate) fn stop_child(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    signal(child.id(), "-TERM");
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait().ok()
}

/// Stops the engine of `dir` and everything it started, and unmounts what is left under `dir`
/// (synchronously), without removing the directory.
pub(crate) fn teardown_docker(dir: &Path, child: Option<Child>) {
    let tag = dir_tag(dir);
    let host = format!("unix://{}", dir.join("docker.sock").display());
    let log = dir.join("commands.log");
    let dockerd = read_pid(&dir.join("docker.pid"))
        .filter(|&pid| alive(pid) && cmdline(pid).is_some_and(|c| c.contains(&host)));
    if dockerd.is_some() {
        // Removing the containers first spares the daemon's stop its per-container grace time.
        let ids = Command::new("timeout")
            .args(["20", "docker", "--host", &host, "ps", "-aq"])
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            run_logged(
                Command::new("timeout")
                    .args(["30", "docker", "--host", &host, "rm", "-f"])
                    .args(&ids),
                &log,
            );
        }
    }
    match child {
        Some(mut child) => {
            stop_child(&mut child, Duration::from_secs(30));
        }
        None => {
            if let Some(pid) = dockerd {
                signal(pid, "-TERM");
                let deadline = Instant::now() + Duration::from_secs(30);
                while alive(pid) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if alive(pid) {
                    signal(pid, "-KILL");
                }
            }
        }
    }
    // A daemon that was killed leaves its containerd and shims: their command lines name this
    // directory or this engine's containerd namespace.
    kill_matching(&dir.to_string_lossy());
    kill_matching(&format!("-namespace granda-fault-{tag}"));
    // Processes of containers that outlived their shims, then the cgroups themselves.
    let parent = format!("granda-fault-docker-{tag}");
    let controllers: Vec<PathBuf> = fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .chain([PathBuf::from("/sys/fs/cgroup")])
        .map(|c| c.join(&parent))
        .filter(|p| p.is_dir())
        .collect();
    for group in &controllers {
        for sub in fs::read_dir(group).into_iter().flatten().flatten() {
            let procs = fs::read_to_string(sub.path().join("cgroup.procs")).unwrap_or_default();
            for pid in procs.split_whitespace().filter_map(|p| p.parse().ok()) {
                signal(pid, "-KILL");
            }
        }
    }
    for group in &controllers {
        for sub in fs::read_dir(group).into_iter().flatten().flatten() {
            let _ = fs::remove_dir(sub.path());
        }
        let _ = fs::remove_dir(group);
    }
    // The daemon unmounts its data root and overlays when it stops cleanly; after a kill they
    // stay. Innermost first, and only mount points inside this directory.
    let prefix = format!("{}/", dir.display());
    let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    mounts.dedup();
    for mount in mounts {
        run_logged(Command::new("umount").args(["-l", &mount]), &log);
    }
}

/// A stable hash of what the test images are made of: `tests/images/`, the build script, the
/// granda-hot crate (granda-test/hot and hot-web are its examples), and the busybox binary's size
/// and modification time.
pub(crate) fn image_cache_key() -> String {
    fn fnv(hash: &mut u64, bytes: &[u8]) {
        for b in bytes {
            *hash ^= u64::from(*b);
            *hash = hash.wrapping_mul(0x100_0000_01b3);
        }
    }
    fn files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                files(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = vec![
        root.join("scripts/build-test-images.sh"),
        root.join("hot/Cargo.toml"),
    ];
    files(&root.join("tests/images"), &mut paths);
    // granda-test/hot and hot-web are built from the granda-hot crate's examples.
    files(&root.join("hot/src"), &mut paths);
    files(&root.join("hot/examples"), &mut paths);
    paths.sort();
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for path in &paths {
        fnv(
            &mut hash,
            path.strip_prefix(root)
                .unwrap_or(path)
                .as_os_str()
                .as_encoded_bytes(),
        );
        fnv(&mut hash, &fs::read(path).unwrap_or_default());
    }
    let busybox = std::env::var("BUSYBOX").unwrap_or_else(|_| "/bin/busybox".into());
    if let Ok(meta) = fs::metadata(&busybox) {
        use std::os::unix::fs::MetadataExt;
        fnv(
            &mut hash,
            format!("{busybox} {} {}", meta.len(), meta.mtime()).as_bytes(),
        );
    }
    format!("{hash:016x}")
}

// ---------------------------------------------------------------------------------------------------
// The granda binary
// ---------------------------------------------------------------------------------------------------
