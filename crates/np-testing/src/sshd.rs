//! A private OpenSSH server on 127.0.0.1 with throwaway host keys, for tests
//! of host-key scanning (static driver, cloud launches).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SSHD: &str = "/usr/sbin/sshd";

/// A running `sshd -D` on 127.0.0.1 at a free port.
pub struct Sshd {
    child: Option<Child>,
    dir: PathBuf,
    pub port: u16,
    /// The host keys as `"<type> <base64>"`, in upstream order (ed25519, ecdsa, rsa).
    pub keys: Vec<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A port nothing listens on.
pub fn closed_port() -> u16 {
    free_port()
}

impl Sshd {
    /// Starts a server. Fails (never skips) when OpenSSH's server is missing.
    pub fn start() -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: run tools/setup.sh (it installs openssh-server) before these tests"
        );
        let dir = std::env::temp_dir().join(format!("np-static-sshd-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("sshd temp dir");
        let mut keys = Vec::new();
        let mut key_paths = Vec::new();
        for (kind, extra) in
            [("ed25519", &[][..]), ("ecdsa", &["-b", "256"][..]), ("rsa", &["-b", "2048"][..])]
        {
            let path = dir.join(format!("host_{kind}"));
            let status = Command::new("ssh-keygen")
                .args(["-q", "-N", "", "-t", kind])
                .args(extra)
                .arg("-f")
                .arg(&path)
                .stdin(Stdio::null())
                .status()
                .expect("run ssh-keygen (openssh-client; tools/setup.sh installs it)");
            assert!(status.success(), "ssh-keygen -t {kind} failed");
            let public = std::fs::read_to_string(path.with_extension("pub")).expect("public key");
            let mut fields = public.split_whitespace();
            keys.push(format!("{} {}", fields.next().unwrap_or_default(), fields.next().unwrap_or_default()));
            key_paths.push(path);
        }
        // Privilege separation directory, as the Debian service creates it.
        let _ = std::fs::create_dir_all("/run/sshd");
        for _attempt in 0..5 {
            let port = free_port();
            let config = dir.join("sshd_config");
            let mut text = format!("ListenAddress 127.0.0.1\nPort {port}\n");
            for p in &key_paths {
                text.push_str(&format!("HostKey {}\n", p.display()));
            }
            text.push_str(&format!(
                "PidFile {}\nUsePAM no\nPasswordAuthentication no\nStrictModes no\n",
                dir.join("sshd.pid").display()
            ));
            std::fs::write(&config, text).expect("write sshd_config");
            let mut child = Command::new(SSHD)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start sshd");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken meanwhile, or a config problem: retry
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Sshd { child: Some(child), dir, port, keys };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("sshd did not start (tried 5 ports); run `{SSHD} -t -f <config>` to see why");
    }

    /// Stops the server (kills exactly the process this test started).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
