//! Services the demo runs by itself on one machine, without an operator: a private
//! PostgreSQL cluster from the system's server binaries, and free ports. The release
//! binary needs these; the test kit re-exports them for the tests and the bench.

pub mod cluster;

pub use cluster::{is_root, server_bin, ClusterError, PrivatePostgres};

/// A port nobody listens on now (the OS's pick for port 0).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
