//! [`LocalEtcd`]: an etcd cluster of real `etcd` processes on loopback, in a
//! temporary directory, for tests and benchmarks (Debian's `etcd-server`).
//!
//! It is not a fake: the members are etcd itself, started with fresh ports,
//! and the handle can kill, pause and resume each of them to test what a
//! manager does when etcd fails. Every member is killed when it is dropped.
//!
//! [`LocalEtcd::start_secure`] starts one as an operator secures etcd: the
//! members speak TLS with certificates of an etcd CA of their own, and
//! check that clients present one (`--client-cert-auth`); [`LocalEtcd::
//! enable_auth`] then turns on etcd's authentication, with a user whose role
//! may read and write only one prefix.

use std::io::{Read, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

use super::{EtcdAccess, EtcdUrl};

/// The program started: `ORCH_ETCD` if set, else `etcd` on the `PATH`.
pub fn program() -> String {
    std::env::var("ORCH_ETCD").unwrap_or_else(|_| "etcd".into())
}

/// One member: its process (`None` while killed) and its ports.
struct Member {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    /// Where it serves `/health` in plain HTTP (its client port speaks TLS
    /// and wants a certificate in a secure cluster).
    metrics: SocketAddr,
    process: Option<Child>,
}

/// A secure cluster's files, in its directory, and its user.
struct Secure {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// The user and its password file, once [`LocalEtcd::enable_auth`] ran.
    user: Option<(String, PathBuf)>,
}

/// A local etcd cluster. Dropping it kills every member and deletes its data.
pub struct LocalEtcd {
    dir: PathBuf,
    members: Vec<Member>,
    initial_cluster: String,
    /// More flags for every member.
    args: Vec<String>,
    /// TLS and the user, in a secure cluster.
    secure: Option<Secure>,
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
        Self::start_all(size, args, false)
    }

    /// As [`LocalEtcd::start`], the members speaking TLS only, with
    /// certificates of an etcd CA of their own, and refusing a client that
    /// presents no certificate this CA signed. [`LocalEtcd::access`] and
    /// [`LocalEtcd::manager_args`] say how to reach it.
    ///
    /// # Errors
    /// As [`LocalEtcd::start`], or if the certificates cannot be made.
    pub fn start_secure(size: usize) -> Result<Self, String> {
        Self::start_all(size, &[], true)
    }

    fn start_all(size: usize, args: &[String], secure: bool) -> Result<Self, String> {
        let mut tries = 0;
        loop {
            tries += 1;
            let mut cluster = Self::start_once(size, args, secure)?;
            match cluster.wait_healthy(Duration::from_secs(30)) {
                Ok(()) => return Ok(cluster),
                Err(e) if tries < 3 && cluster.exited() => {
                    eprintln!("etcd: a member exited at start, trying new ports: {e}");
                }
                Err(e) => return Err(format!("{e}; {}", cluster.logs())),
            }
        }
    }

    fn start_once(size: usize, args: &[String], secure: bool) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("orch-etcd-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let secure = if secure {
            Some(make_certificates(&dir)?)
        } else {
            None
        };
        let mut members = Vec::with_capacity(size);
        for i in 0..size {
            members.push(Member {
                name: format!("m{i}"),
                client: free_port()?,
                peer: free_port()?,
                metrics: free_port()?,
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
            secure,
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
        let scheme = if self.secure.is_some() {
            "https"
        } else {
            "http"
        };
        let mut command = Command::new(program());
        if let Some(secure) = &self.secure {
            command
                .arg("--cert-file")
                .arg(self.dir.join("server.pem"))
                .arg("--key-file")
                .arg(self.dir.join("server-key.pem"))
                .arg("--trusted-ca-file")
                .arg(&secure.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen-client-urls")
            .arg(format!("{scheme}://{}", member.client))
            .arg("--advertise-client-urls")
            .arg(format!("{scheme}://{}", member.client))
            .arg("--listen-metrics-urls")
            .arg(format!("http://{}", member.metrics))
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

    /// How a store reaches this cluster: in plaintext, or in a secure one
    /// over TLS with the client certificate, and as the user once
    /// [`LocalEtcd::enable_auth`] ran.
    ///
    /// # Errors
    /// If a file of the secure cluster cannot be read.
    pub fn access(&self) -> Result<EtcdAccess, String> {
        let Some(secure) = &self.secure else {
            return Ok(EtcdAccess::default());
        };
        let access = EtcdAccess::from_files(&secure.ca, Some(&secure.cert), Some(&secure.key))?;
        match &secure.user {
            Some((user, password)) => {
                let password = std::fs::read_to_string(password).map_err(|e| e.to_string())?;
                Ok(access.with_user(user, password.trim_end()))
            }
            None => Ok(access),
        }
    }

    /// The flags of `orchctl manager` that say what [`LocalEtcd::access`]
    /// does: `--etcd-ca`, `--etcd-cert`, `--etcd-key` and, with a user,
    /// `--etcd-user` and `--etcd-password-file` (none in plaintext).
    pub fn manager_args(&self) -> Vec<String> {
        let Some(secure) = &self.secure else {
            return Vec::new();
        };
        let mut args = vec![
            "--etcd-ca".to_owned(),
            secure.ca.display().to_string(),
            "--etcd-cert".to_owned(),
            secure.cert.display().to_string(),
            "--etcd-key".to_owned(),
            secure.key.display().to_string(),
        ];
        if let Some((user, password)) = &secure.user {
            args.extend([
                "--etcd-user".to_owned(),
                user.clone(),
                "--etcd-password-file".to_owned(),
                password.display().to_string(),
            ]);
        }
        args
    }

    /// The files of a secure cluster: etcd's CA, and a client certificate
    /// and key it signed; `None` in plaintext.
    pub fn tls_files(&self) -> Option<(PathBuf, PathBuf, PathBuf)> {
        self.secure
            .as_ref()
            .map(|s| (s.ca.clone(), s.cert.clone(), s.key.clone()))
    }

    /// Turns on etcd's authentication in a secure cluster, as an operator
    /// does: a `root` user, then `user` with a random password (in a file
    /// of the cluster's directory) and a role that may read and write
    /// `prefix` (`""`: the default one) and nothing else. From then on
    /// [`LocalEtcd::access`] and [`LocalEtcd::manager_args`] are that user.
    ///
    /// # Errors
    /// If the cluster is not secure, or etcd refuses a step.
    pub fn enable_auth(&mut self, user: &str, prefix: &str) -> Result<(), String> {
        if self.secure.is_none() {
            return Err("etcd's authentication wants a secure cluster (start_secure)".into());
        }
        let password = uuid::Uuid::new_v4().simple().to_string();
        let password_file = self.dir.join(format!("{user}.password"));
        std::fs::write(&password_file, format!("{password}\n")).map_err(|e| e.to_string())?;
        let url = self.url(prefix);
        let access = self.access()?;
        let (user_owned, prefix) = (user.to_owned(), url.prefix.clone());
        // Its own runtime, on a thread of its own: the caller may be in one.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(grant(url, access, user_owned, password, prefix))
        })
        .join()
        .map_err(|_| "enabling etcd's authentication panicked".to_owned())??;
        if let Some(secure) = &mut self.secure {
            secure.user = Some((user.to_owned(), password_file));
        }
        Ok(())
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
                match health(member.metrics) {
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

/// Makes a secure cluster's certificates in `dir`: an etcd CA, the
/// members' server certificate (for loopback) and a client certificate.
fn make_certificates(dir: &std::path::Path) -> Result<Secure, String> {
    let failed = |what: &'static str| move |e: rcgen::Error| format!("making {what}: {e}");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text)
            .map(|()| path)
            .map_err(|e| format!("writing {name}: {e}"))
    };
    let ca_key = KeyPair::generate().map_err(failed("etcd's CA key"))?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "local etcd CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = params
        .self_signed(&ca_key)
        .map_err(failed("etcd's CA certificate"))?;
    let ca = write("ca.pem", &ca_cert.pem())?;
    let issuer = Issuer::new(params, ca_key);
    let sign = |names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().map_err(failed("a key"))?;
        let mut params = CertificateParams::new(names).map_err(failed("a certificate's names"))?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(failed("a certificate"))?;
        Ok::<_, String>((cert.pem(), key.serialize_pem()))
    };
    let (server, server_key) = sign(
        vec!["localhost".into(), "127.0.0.1".into()],
        "local etcd",
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    write("server.pem", &server)?;
    write("server-key.pem", &server_key)?;
    let (client, client_key) = sign(
        Vec::new(),
        "orch-manager",
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    Ok(Secure {
        ca,
        cert: write("client.pem", &client)?,
        key: write("client-key.pem", &client_key)?,
        user: None,
    })
}

/// etcd's authentication on: `root` (which etcd wants before it enables
/// it), and `user` with `password` and a role reading and writing `prefix`.
async fn grant(
    url: EtcdUrl,
    access: EtcdAccess,
    user: String,
    password: String,
    prefix: String,
) -> Result<(), String> {
    let failed = |step: &'static str| move |e: etcd_client::Error| format!("{step}: {e}");
    let options = access.apply(etcd_client::ConnectOptions::new());
    let mut client = etcd_client::Client::connect(access.endpoints(&url), Some(options))
        .await
        .map_err(failed("connecting"))?;
    let root_password = uuid::Uuid::new_v4().simple().to_string();
    client
        .user_add("root", root_password, None)
        .await
        .map_err(failed("adding root"))?;
    client
        .user_grant_role("root", "root")
        .await
        .map_err(failed("granting root"))?;
    let role = format!("{user}-role");
    client
        .role_add(role.clone())
        .await
        .map_err(failed("adding the role"))?;
    client
        .role_grant_permission(
            role.clone(),
            etcd_client::Permission::read_write(prefix).with_prefix(),
        )
        .await
        .map_err(failed("granting the prefix"))?;
    client
        .user_add(user.clone(), password, None)
        .await
        .map_err(failed("adding the user"))?;
    client
        .user_grant_role(user, role)
        .await
        .map_err(failed("granting the role"))?;
    client
        .auth_enable()
        .await
        .map_err(failed("enabling authentication"))?;
    Ok(())
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
