//! A real `redis-server` on a free loopback port, stopped when dropped.
//! `.ci/run` installs the Debian package.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running redis-server.
pub struct RedisServer {
    child: Child,
    /// Its address.
    pub address: SocketAddr,
}

impl RedisServer {
    /// Starts a redis-server without persistence on a free port and waits
    /// until it accepts connections.
    ///
    /// # Panics
    /// When `redis-server` is not installed or does not start.
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        let address: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        let server = Self { child, address };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(address).await.is_ok() {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server did not start on {address}");
    }

    /// `redis://<address>`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.address)
    }

    /// Stops the server now (kill), as an outage.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
