//! A `stageflow broker` child process for tests: 127.0.0.1, its own data
//! directory, killed (SIGKILL) when dropped.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::Duration;

/// How long the broker may take to say where it listens.
const DEADLINE: Duration = Duration::from_secs(60);

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binds port 0");
    listener.local_addr().expect("has an address").port()
}

/// A broker child process, killed (SIGKILL) when dropped.
pub struct BrokerProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl BrokerProcess {
    /// Starts `stageflow broker` on `addr` (port 0: any free port), storing in `data_dir`, with more flags.
    pub fn start(data_dir: &Path, addr: &str, extra: &[&str]) -> BrokerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_stageflow"))
            .args(["broker", "--addr", addr, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the stageflow binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (found, address) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("broker listening on ") {
                    let _ = found.send(rest.split_whitespace().next().unwrap_or_default().to_string());
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let collected = stderr.clone();
        let mut pipe = child.stderr.take().expect("piped stderr");
        thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(count) = pipe.read(&mut buffer) {
                if count == 0 {
                    break;
                }
                collected.lock().unwrap().push_str(&String::from_utf8_lossy(&buffer[..count]));
            }
        });
        let mut process = BrokerProcess { child, addr: "127.0.0.1:1".parse().unwrap(), stderr };
        match address.recv_timeout(DEADLINE) {
            Ok(address) => process.addr = address.parse().expect("a socket address"),
            Err(_) => panic!("the broker did not start; stderr: {}", process.stderr()),
        }
        process
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Peak resident memory of the broker, from /proc (Linux), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// SIGKILL, no chance to flush or sync anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A line connection to a broker: one reply line read per command sent.
pub struct LineClient {
    reader: BufReader<std::net::TcpStream>,
    writer: std::net::TcpStream,
}

impl LineClient {
    /// Connects to the broker at `addr` (replies time out after [`DEADLINE`]).
    pub fn connect(addr: SocketAddr) -> LineClient {
        let stream = std::net::TcpStream::connect(addr).expect("connects to the broker");
        stream.set_read_timeout(Some(DEADLINE)).expect("a read timeout");
        LineClient { reader: BufReader::new(stream.try_clone().expect("a clone")), writer: stream }
    }

    /// Sends `command` and returns the broker's reply line.
    pub fn ask(&mut self, command: &str) -> String {
        use std::io::Write;
        self.writer.write_all(format!("{command}\n").as_bytes()).expect("sends");
        let mut reply = String::new();
        self.reader.read_line(&mut reply).expect("a reply");
        reply.trim_end().to_string()
    }
}
