//! A real etcd cluster for tests: members started from the `etcd` binary (Debian's
//! `etcd-server` package; `scripts/test` installs it) on free loopback ports with temporary
//! data dirs, each killed by PID when the cluster is dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_addr;

/// Whether the `etcd` binary can be used (see [`crate::component_available`]).
pub fn etcd_available(test: &str) -> bool {
    crate::component_available(
        test,
        "etcd",
        &["--version"],
        "scripts/test installs Debian's etcd-server",
    )
}

struct Member {
    name: String,
    client: String,
    peer: String,
    data: PathBuf,
    process: Option<Child>,
}

/// A running etcd cluster of N members on loopback.
pub struct EtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `size` members and waits until every one reports itself healthy.
    ///
    /// Free ports are found by binding and letting go, so another test may take one before
    /// etcd binds it: a member that exits with "address already in use" makes the whole
    /// cluster start again on new ports (up to five times).
    pub fn start(size: usize) -> Self {
        let mut attempt = 1;
        loop {
            match Self::try_start(size) {
                Ok(cluster) => return cluster,
                Err(log) if log.contains("address already in use") && attempt < 5 => {
                    eprintln!("etcd lost a port to another test (attempt {attempt}); retrying");
                    attempt += 1;
                }
                Err(log) => panic!("etcd did not start: {log}"),
            }
        }
    }

    fn try_start(size: usize) -> Result<Self, String> {
        let dir = tempfile::tempdir().unwrap();
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client: format!("http://{}", free_addr()),
                peer: format!("http://{}", free_addr()),
                data: dir.path().join(format!("m{i}")),
                process: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("shoal-test-{}", std::process::id());
        let mut cluster = Self {
            members,
            initial_cluster,
            token,
            dir,
        };
        for i in 0..size {
            cluster.spawn(i, "new");
        }
        for i in 0..size {
            cluster.try_wait_healthy(i)?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let log = self.dir.path().join(format!("m{i}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let member = &self.members[i];
        let child = Command::new("etcd")
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&member.data)
            .args(["--listen-client-urls", &member.client])
            .args(["--advertise-client-urls", &member.client])
            .args(["--listen-peer-urls", &member.peer])
            .args(["--initial-advertise-peer-urls", &member.peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token])
            // Loopback members: fast elections keep failover tests short.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("starting etcd");
        self.members[i].process = Some(child);
    }

    fn wait_healthy(&mut self, i: usize) {
        if let Err(message) = self.try_wait_healthy(i) {
            panic!("{message}");
        }
    }

    /// Waits until member `i` is healthy; the error says why not, with the member's log.
    fn try_wait_healthy(&mut self, i: usize) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let address = self.members[i]
            .client
            .trim_start_matches("http://")
            .to_string();
        loop {
            if let Some(Ok(Some(status))) = self.members[i].process.as_mut().map(|p| p.try_wait()) {
                return Err(format!(
                    "etcd member {i} exited with {status}: {}",
                    self.log(i)
                ));
            }
            if health(&address) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "etcd member {i} was not healthy within 30 s: {}",
                    self.log(i)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What member `i` printed.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("m{i}.log"))).unwrap_or_default()
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.clone()).collect()
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut process) = self.members[i].process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Starts member `i` again on its data dir and waits until it is healthy.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i, "existing");
        self.wait_healthy(i);
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// Whether the member at `address` answers `/health` with `"health":"true"`.
fn health(address: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(address) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /health HTTP/1.0\r\nHost: {address}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.contains("\"health\":\"true\"")
}
