//! Serving the fake API server over real HTTP on loopback, so that a separate
//! process (the `palisade controller` binary in benchmarks) can talk to it
//! through an ordinary kubeconfig.

use std::net::SocketAddr;

use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::FakeApiServer;

impl FakeApiServer {
    /// Serves this API server over plain HTTP/1.1 on `127.0.0.1:0` until the
    /// returned task is aborted. Returns the bound address.
    pub async fn serve_http(&self) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = self.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let service = hyper_util::service::TowerToHyperService::new(server.clone());
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok((addr, task))
    }

    /// A kubeconfig (YAML) pointing at `addr`, for another process.
    pub fn kubeconfig(addr: SocketAddr) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
        )
    }
}
