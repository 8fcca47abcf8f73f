//! moto's server: a local AWS API endpoint (X-Ray, CloudWatch, CloudWatch Logs) from the
//! project's `.venv`, on a port of 127.0.0.1, killed on drop. It keeps everything in memory:
//! a restart on the same port is an endpoint that forgot what it held.

use crate::envoy::{agent, repo_root};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running moto server.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Moto {
    /// Starts moto on `port` and waits until it answers.
    pub fn start_on(port: u16) -> Moto {
        let bin = repo_root().join(".venv/bin/moto_server");
        assert!(bin.exists(), "{} missing: run `make setup`", bin.display());
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto");
        let m = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while agent()
            .get(&format!("http://127.0.0.1:{port}/moto-api/"))
            .call()
            .is_err()
        {
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        m
    }

    /// Its endpoint URL (what `AWS_ENDPOINT_URL` takes).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
