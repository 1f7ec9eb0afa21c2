//! Running the real `tracegate serve` from the collector's integration tests.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_tracegate");

/// The server process, killed (SIGKILL) when dropped, also on failure.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `serve --grpc 127.0.0.1:0 --data DATA ARGS…` and returns it with
/// its "listening" line, which names the addresses it bound.
pub fn serve(data: &Path, args: &[&str]) -> (Server, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--grpc", "127.0.0.1:0", "--data"])
        .arg(data)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    // Blocks until the server prints its addresses (or exits: EOF, empty).
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert!(line.contains("listening"), "no listening line: {line:?}");
    (server, line)
}

/// The value after `key` in the listening line, up to the next space.
pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split(key)
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}
