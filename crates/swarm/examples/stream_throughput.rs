//! Measures one pieces stream between two nodes over loopback: the cost of the transport
//! (TCP + security + yamux) that every piece pays. Not a test: numbers go to
//! `docs/transport.md`.
//!
//! ```sh
//! cargo run --release -j2 -p pollen-swarm --example stream_throughput -- --security tls
//! cargo run --release -j2 -p pollen-swarm --example stream_throughput -- --security noise
//! cargo run --release -j2 -p pollen-swarm --example stream_throughput -- --swarm-key false
//! ```
//!
//! `--swarm-key` (default true, as agents run) makes both nodes prove a swarm key on the
//! connection (`pollen-swarm`'s `proof.rs`).
//!
//! Both nodes run in this process on one tokio runtime (one worker per core), as two agents
//! would share a 2-core machine. One node writes `--size` bytes in `--write-size` writes to a
//! stream it opened; the other reads them all and answers with the count. The clock runs from
//! the first write to that answer; CPU is the whole process's user + system time
//! (getrusage), i.e. both ends' encryption, yamux and copies.

use std::time::{Duration, Instant};

use libp2p::futures::{AsyncReadExt, AsyncWriteExt};
use pollen_swarm::{Node, Security, SwarmConfig, SwarmKey};

struct Args {
    security: Security,
    swarm_key: bool,
    size: u64,
    write_size: usize,
    runs: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        security: Security::Tls,
        swarm_key: true,
        size: 1 << 30,
        write_size: 1 << 20,
        runs: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--security" => {
                args.security = value.parse().unwrap_or_else(|e| usage(&format!("{e}")))
            }
            "--swarm-key" => {
                args.swarm_key = value
                    .parse()
                    .unwrap_or_else(|_| usage("--swarm-key true|false"))
            }
            "--size" => args.size = value.parse().unwrap_or_else(|_| usage("--size BYTES")),
            "--write-size" => {
                args.write_size = value
                    .parse()
                    .unwrap_or_else(|_| usage("--write-size BYTES"))
            }
            "--runs" => args.runs = value.parse().unwrap_or_else(|_| usage("--runs N")),
            other => usage(&format!("unknown flag {other}")),
        }
    }
    args
}

fn usage(msg: &str) -> ! {
    eprintln!("{msg}\nusage: stream_throughput [--security tls|noise] [--swarm-key true|false] [--size BYTES] [--write-size BYTES] [--runs N]");
    std::process::exit(2)
}

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own; RUSAGE_SELF is always valid.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    assert_eq!(rc, 0, "getrusage");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args();
    let config = SwarmConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
        security: args.security,
        swarm_key: args.swarm_key.then(SwarmKey::generate).transpose()?,
        ..SwarmConfig::default()
    };
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let sender = Node::start(dir_a.path(), config.clone()).await?;
    let receiver = Node::start(dir_b.path(), config).await?;
    let addr = receiver.listen_addrs().await?[0].clone();
    sender.add_address(receiver.peer_id(), addr).await?;

    let mut incoming = receiver.incoming_streams()?;
    tokio::spawn(async move {
        let mut buf = vec![0u8; 1 << 20];
        while let Some((_, mut stream)) = incoming.next().await {
            let mut total = 0u64;
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(e) => panic!("receiver read: {e}"),
                }
            }
            stream
                .write_all(&total.to_le_bytes())
                .await
                .expect("answer");
            stream.close().await.expect("close");
        }
    });

    println!(
        "security={} swarm_key={} size={} write_size={} cores={}",
        args.security,
        args.swarm_key,
        args.size,
        args.write_size,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let chunk = vec![0xa5u8; args.write_size];
    for run in 1..=args.runs {
        let mut stream = sender.open_stream(receiver.peer_id()).await?;
        let (cpu0, t0) = (cpu_time(), Instant::now());
        let mut left = args.size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            stream.write_all(&chunk[..n]).await?;
            left -= n as u64;
        }
        stream.close().await?;
        let mut answer = [0u8; 8];
        stream.read_exact(&mut answer).await?;
        let (elapsed, cpu) = (t0.elapsed(), cpu_time() - cpu0);
        assert_eq!(u64::from_le_bytes(answer), args.size, "receiver counted");
        println!(
            "run {run}: {:.2} GB/s ({:.3} s), CPU {:.2} s ({:.2} cores busy)",
            args.size as f64 / elapsed.as_secs_f64() / 1e9,
            elapsed.as_secs_f64(),
            cpu.as_secs_f64(),
            cpu.as_secs_f64() / elapsed.as_secs_f64(),
        );
    }
    sender.shutdown().await?;
    receiver.shutdown().await?;
    Ok(())
}
