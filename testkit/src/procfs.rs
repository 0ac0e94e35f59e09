//! A process's TCP connections, from /proc (Linux): what a benchmark or an
//! e2e test counts to show that a controller's connections to the API server
//! do not grow with what it manages.

use std::collections::BTreeSet;

/// Socket inodes of process `pid` (empty when it cannot be read).
fn socket_inodes(pid: u32) -> BTreeSet<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return BTreeSet::new();
    };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_str()?.to_string();
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// Established TCP connections of process `pid` to remote port `port`
/// (IPv4 and IPv6): its socket inodes matched against `/proc/net/tcp{,6}`.
pub fn established_to(pid: u32, port: u16) -> usize {
    let mine = socket_inodes(pid);
    let mut n = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(remote), Some(state), Some(inode)) = (f.get(2), f.get(3), f.get(9)) else {
                continue;
            };
            let remote_port = remote
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            let inode: u64 = inode.parse().unwrap_or(0);
            if *state == "01" && remote_port == Some(port) && mine.contains(&inode) {
                n += 1;
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    /// A connection this process opens to a listener is counted, and only
    /// while it is open.
    #[test]
    fn counts_this_processs_connections_to_a_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let me = std::process::id();
        assert_eq!(super::established_to(me, port), 0);
        let a = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let b = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let _accepted = (
            listener.accept().expect("accept"),
            listener.accept().expect("accept"),
        );
        assert_eq!(super::established_to(me, port), 2);
        drop((a, b));
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(super::established_to(me, port), 0);
    }
}
