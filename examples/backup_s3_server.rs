//! A local S3 server (s3s-fs) for `make bench`: serves `ROOT` on 127.0.0.1:PORT with
//! SigV4 credentials from `S3_ACCESS_KEY` / `S3_SECRET_KEY` (defaults for benchmarks
//! only). Runs until killed; prints `listening on http://…` once ready.

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let root = args.next().ok_or("usage: backup_s3_server ROOT [PORT]")?;
    let port: u16 = args.next().map(|p| p.parse()).transpose()?.unwrap_or(0);
    let ak = std::env::var("S3_ACCESS_KEY").unwrap_or_else(|_| "bench".into());
    let sk = std::env::var("S3_SECRET_KEY").unwrap_or_else(|_| "bench-secret".into());
    let mut b = S3ServiceBuilder::new(
        s3s_fs::FileSystem::new(&root).map_err(|e| format!("s3s-fs: {e:?}"))?,
    );
    b.set_auth(SimpleAuth::from_single(ak, sk));
    let service = b.build();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let http = ConnBuilder::new(TokioExecutor::new());
    loop {
        let (socket, _) = listener.accept().await?;
        let conn = http
            .serve_connection(TokioIo::new(socket), service.clone())
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}
