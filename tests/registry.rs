//! A real OCI registry for tests: Debian's `docker-registry` (distribution 2.x; `scripts/test`
//! installs it) on a free loopback port, storing in a temporary directory, optionally behind
//! htpasswd basic auth; killed by PID when dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_addr;

/// Whether `docker-registry` can be used (see [`crate::component_available`]).
pub fn registry_available(test: &str) -> bool {
    crate::component_available(
        test,
        "docker-registry",
        &["--version"],
        "scripts/test installs Debian's docker-registry",
    )
}

/// A running registry.
pub struct Registry {
    /// `127.0.0.1:PORT`: the registry part of image references.
    pub host: String,
    process: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry; with `user`, only that user (password `password`) may pull or push.
    pub fn start(user: Option<(&str, &str)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let host = free_addr().to_string();
        let auth = match user {
            Some((user, password)) => {
                let hash = bcrypt::hash(password, 4).unwrap();
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, format!("{user}:{hash}\n")).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: shoal-test\n    path: {}\n",
                    path.display()
                )
            }
            None => String::new(),
        };
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n{auth}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let process = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("docker-registry starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&host).is_err() {
            assert!(
                Instant::now() < deadline,
                "the registry listens on {host} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            host,
            process,
            _dir: dir,
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
