//! [`LocalEtcd`]: an etcd cluster of real `etcd` processes on loopback, in a
//! temporary directory, for tests and benchmarks (Debian's `etcd-server`).
//!
//! It is not a fake: the members are etcd itself, started with fresh ports,
//! and the handle can kill, pause and resume each of them to test what a
//! manager does when etcd fails. Every member is killed when it is dropped.

use std::io::{Read, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::EtcdUrl;

/// The program started: `ORCH_ETCD` if set, else `etcd` on the `PATH`.
pub fn program() -> String {
    std::env::var("ORCH_ETCD").unwrap_or_else(|_| "etcd".into())
}

/// One member: its process (`None` while killed) and its ports.
struct Member {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    process: Option<Child>,
}

/// A local etcd cluster. Dropping it kills every member and deletes its data.
pub struct LocalEtcd {
    dir: PathBuf,
    members: Vec<Member>,
    initial_cluster: String,
    /// More flags for every member.
    args: Vec<String>,
}

impl LocalEtcd {
    /// Starts `size` members and waits until the cluster has a leader.
    ///
    /// The ports are found free a moment before etcd binds them, so another
    /// process may take one meanwhile: a member that exits at start is
    /// retried with new ports, twice.
    ///
    /// # Errors
    /// If `etcd` cannot be started (saying to install `etcd-server`) or the
    /// cluster does not become healthy within 30 s, with the members' logs.
    pub fn start(size: usize) -> Result<Self, String> {
        Self::start_with(size, &[])
    }

    /// As [`LocalEtcd::start`], every member started with `args` besides
    /// its own (`--max-txn-ops=1024`, say).
    ///
    /// # Errors
    /// As [`LocalEtcd::start`].
    pub fn start_with(size: usize, args: &[String]) -> Result<Self, String> {
        let mut tries = 0;
        loop {
            tries += 1;
            let mut cluster = Self::start_once(size, args)?;
            match cluster.wait_healthy(Duration::from_secs(30)) {
                Ok(()) => return Ok(cluster),
                Err(e) if tries < 3 && cluster.exited() => {
                    eprintln!("etcd: a member exited at start, trying new ports: {e}");
                }
                Err(e) => return Err(format!("{e}; {}", cluster.logs())),
            }
        }
    }

    fn start_once(size: usize, args: &[String]) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("orch-etcd-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let mut members = Vec::with_capacity(size);
        for i in 0..size {
            members.push(Member {
                name: format!("m{i}"),
                client: free_port()?,
                peer: free_port()?,
                process: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            dir,
            members,
            initial_cluster,
            args: args.to_vec(),
        };
        for i in 0..size {
            cluster.spawn(i)?;
        }
        Ok(cluster)
    }

    /// Whether a member's process has exited.
    fn exited(&mut self) -> bool {
        self.members.iter_mut().any(|m| {
            m.process
                .as_mut()
                .is_some_and(|child| matches!(child.try_wait(), Ok(Some(_))))
        })
    }

    /// The last lines of every member's log.
    fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let text = std::fs::read_to_string(self.dir.join(format!("{}.log", m.name)))
                    .unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                format!(
                    "{}'s log: {}",
                    m.name,
                    lines[lines.len().saturating_sub(5)..].join(" | ")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let member = &self.members[i];
        let data = self.dir.join(&member.name);
        let log = std::fs::File::create(self.dir.join(format!("{}.log", member.name)))
            .map_err(|e| format!("creating etcd's log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(program())
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen-client-urls")
            .arg(format!("http://{}", member.client))
            .arg("--advertise-client-urls")
            .arg(format!("http://{}", member.client))
            .arg("--listen-peer-urls")
            .arg(format!("http://{}", member.peer))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://{}", member.peer))
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(self.dir.display().to_string())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| {
                format!(
                    "starting {}: {e} (install Debian's etcd-server, or set ORCH_ETCD)",
                    program()
                )
            })?;
        self.members[i].process = Some(child);
        Ok(())
    }

    /// The URL of the whole cluster, every member, under `prefix` (`""` for
    /// the default one).
    pub fn url(&self, prefix: &str) -> EtcdUrl {
        EtcdUrl {
            endpoints: self
                .members
                .iter()
                .map(|m| format!("http://{}", m.client))
                .collect(),
            prefix: if prefix.is_empty() {
                super::DEFAULT_PREFIX.to_owned()
            } else {
                format!("/{}/", prefix.trim_matches('/'))
            },
        }
    }

    /// The URL as `orchctl manager --store` takes it.
    pub fn store_arg(&self, prefix: &str) -> String {
        self.url(prefix).to_string()
    }

    /// Kills member `i` with SIGKILL; [`LocalEtcd::restart`] brings it back
    /// with its data.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again after [`LocalEtcd::kill`], with its data.
    ///
    /// # Errors
    /// If it cannot be started.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        if self.members[i].process.is_none() {
            self.spawn(i)?;
        }
        Ok(())
    }

    /// Sets the flags of every member started from now on (by
    /// [`LocalEtcd::restart`]), as an operator who restarts etcd with other
    /// settings.
    pub fn set_args(&mut self, args: &[String]) {
        self.args = args.to_vec();
    }

    /// Waits until a member answers `/health` as healthy (the cluster has a
    /// leader and a quorum).
    ///
    /// # Errors
    /// If none does within `timeout`.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no member answered");
        while Instant::now() < deadline {
            for member in self.members.iter().filter(|m| m.process.is_some()) {
                match health(member.client) {
                    Ok(true) => return Ok(()),
                    Ok(false) => last = format!("{} says it is not healthy", member.name),
                    Err(e) => last = format!("{}: {e}", member.name),
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "the etcd cluster in {} did not become healthy within {timeout:?}: {last}",
            self.dir.display()
        ))
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free port on loopback (free when asked: etcd binds it a moment later).
fn free_port() -> Result<SocketAddr, String> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("finding a free port: {e}"))
}

/// Asks a member's `/health`, over plain HTTP/1.0.
fn health(addr: SocketAddr) -> Result<bool, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /health HTTP/1.0\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .map_err(|e| e.to_string())?;
    Ok(reply.contains("\"health\":\"true\""))
}
