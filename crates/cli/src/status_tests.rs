use super::*;

fn sample() -> Status {
    Status {
        version: "0.1.0".into(),
        peer_id: Some("12D3KooWExample".into()),
        listen_addrs: vec![
            "/ip4/10.0.0.7/tcp/65003".into(),
            "/ip4/127.0.0.1/tcp/65003".into(),
        ],
        peers: vec!["12D3KooWPeerA".into(), "12D3KooWPeerB".into()],
        routing_table_peers: 5,
        provided_blobs: 14,
        banned_peers: 1,
        blobs_in_flight: vec![
            BlobStatus {
                digest: format!("sha256:{}", "ab".repeat(32)),
                size: Some(256 << 20),
                pieces: 64,
                pieces_present: 16,
                bytes_from_peers: 48 << 20,
                bytes_from_upstream: 16 << 20,
            },
            BlobStatus {
                digest: format!("sha256:{}", "cd".repeat(32)),
                size: None,
                ..BlobStatus::default()
            },
        ],
        bytes_from_peers: 3 << 30,
        bytes_from_upstream: 1 << 30,
        bytes_to_peers: 0,
        cache_bytes: 5 << 30,
        cache_quota: 20 << 30,
        cache_entries: 12,
        roles: Vec::new(),
        tracked_blobs: Vec::new(),
        trackers: vec!["12D3KooWTracker".into()],
        upload_limit: 100 << 20,
        download_limit: 0,
    }
}

fn tracked(hex: &str, members: usize, holders: usize, fetching: bool) -> TrackedBlob {
    TrackedBlob {
        digest: format!("sha256:{}", hex.repeat(32)),
        members,
        holders,
        fetching,
    }
}

#[test]
fn report_shows_identity_peers_rates_cache_and_blobs() {
    let first = sample();
    let mut now = sample();
    now.bytes_from_peers += 10 << 20;
    now.bytes_from_upstream += 512 << 10;
    let text = report("127.0.0.1:65002", &first, &now, Duration::from_secs(2));
    for want in [
        "PeerId        12D3KooWExample",
        "Listening     /ip4/10.0.0.7/tcp/65003",
        "/ip4/127.0.0.1/tcp/65003",
        "2 connected, 5 in the routing table",
        "12D3KooWPeerB",
        "Providing     14 blobs",
        "1 peer in force",
        "5.0 MiB/s",   // 10 MiB over 2 s from peers
        "256.0 KiB/s", // 512 KiB over 2 s from upstream
        "0 B/s",       // nothing to peers
        "5.0 GiB of 20.0 GiB (25%), 12 entries",
        "Blobs in flight: 2",
        "sha256:abababababab",
        "25%",
        "256.0 MiB",
        "48.0 MiB",
        "16.0 MiB",
    ] {
        assert!(text.contains(want), "report lacks {want:?}:\n{text}");
    }
    // The blob whose size is not known yet has no percentage.
    let last = text.lines().last().unwrap();
    assert!(
        last.contains("sha256:cdcdcdcdcdcd") && last.contains(" - "),
        "{last}"
    );
}

#[test]
fn report_shows_roles_and_the_blobs_coordinated_here() {
    let mut s = sample();
    let text = report("a:1", &s, &s, Duration::from_secs(1));
    assert!(text.contains("Roles         none"), "{text}");
    assert!(
        text.contains("Peer limits   upload 100.0 MiB/s, download unlimited"),
        "{text}"
    );
    assert!(text.contains("Trackers      1 known"), "{text}");
    assert!(!text.contains("coordinated"), "{text}");

    s.roles = vec!["tracker".into(), "seed".into()];
    s.tracked_blobs = vec![tracked("ef", 2, 0, true), tracked("01", 7, 3, false)];
    let text = report("a:1", &s, &s, Duration::from_secs(1));
    assert!(text.contains("Roles         tracker, seed"), "{text}");
    // After the blobs in flight; the busiest first.
    let table: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("Blobs coordinated here"))
        .collect();
    assert_eq!(table.len(), 4, "{text}");
    assert_eq!(table[0], "Blobs coordinated here: 2");
    for (line, want) in table[1..].iter().zip([
        ["DIGEST", "MEMBERS", "HOLDERS", "FETCHING"],
        ["sha256:010101010101", "7", "3", "no"],
        ["sha256:efefefefefef", "2", "0", "yes"],
    ]) {
        assert_eq!(line.split_whitespace().collect::<Vec<_>>(), want, "{text}");
    }
    // The columns line up under their headings.
    assert_eq!(table[1].find("FETCHING"), table[2].find("no"), "{text}");
    assert_eq!(
        table[1].find("HOLDERS").map(|i| i + "HOLDERS".len()),
        table[2].find('3').map(|i| i + 1),
        "{text}"
    );
    assert!(
        text.find("Blobs in flight: 2").unwrap() < text.find("Blobs coordinated").unwrap(),
        "{text}"
    );
}

#[test]
fn long_tracked_lists_are_cut() {
    let mut s = sample();
    s.roles = vec!["tracker".into()];
    s.tracked_blobs = (0..30)
        .map(|i| TrackedBlob {
            digest: format!("sha256:{i:02}{}", "0".repeat(62)),
            members: 100 - i,
            ..TrackedBlob::default()
        })
        .collect();
    let text = report("a:1", &s, &s, Duration::from_secs(1));
    assert!(text.contains("Roles         tracker\n"), "{text}");
    assert!(text.contains("Blobs coordinated here: 30"), "{text}");
    assert!(
        text.lines().any(|l| l
            .split_whitespace()
            .eq(["sha256:190000000000", "81", "0", "no"])),
        "{text}"
    );
    assert!(!text.contains("sha256:20"), "{text}");
    assert!(
        text.contains("... and 10 more (--json lists them all)"),
        "{text}"
    );
}

#[test]
fn report_without_peer_to_peer_or_blobs() {
    let s = Status {
        version: "0.1.0".into(),
        cache_quota: 1 << 30,
        ..Status::default()
    };
    let text = report("127.0.0.1:65002", &s, &s, Duration::from_secs(1));
    assert!(text.contains("Peer-to-peer  off"), "{text}");
    assert!(!text.contains("PeerId"), "{text}");
    assert!(!text.contains("Roles"), "{text}");
    assert!(!text.contains("coordinated"), "{text}");
    assert!(text.contains("Blobs in flight: none"), "{text}");
    assert!(text.contains("0 B of 1.0 GiB (0%), 0 entries"), "{text}");
}

#[test]
fn counters_that_went_back_give_zero_rates() {
    let first = sample();
    let mut now = sample();
    now.bytes_from_peers = 0; // the agent restarted between the samples
    let text = report("a:1", &first, &now, Duration::from_secs(1));
    assert!(!text.contains("EiB"), "{text}");
}

#[test]
fn long_peer_lists_are_cut() {
    let mut s = sample();
    s.peers = (0..50).map(|i| format!("peer{i}")).collect();
    let text = report("a:1", &s, &s, Duration::from_secs(1));
    assert!(
        text.contains("peer19") && !text.contains("peer20"),
        "{text}"
    );
    assert!(
        text.contains("and 30 more (--json lists them all)"),
        "{text}"
    );
}

#[test]
fn human_units() {
    assert_eq!(human(0), "0 B");
    assert_eq!(human(1023), "1023 B");
    assert_eq!(human(1536), "1.5 KiB");
    assert_eq!(human(20 << 30), "20.0 GiB");
    assert_eq!(human_rate(1024.0 * 1024.0 * 100.0), "100.0 MiB/s");
}

#[test]
fn admin_addresses() {
    assert_eq!(admin_addr("127.0.0.1:65002").unwrap(), "127.0.0.1:65002");
    assert_eq!(
        admin_addr("http://10.0.0.7:65002/status").unwrap(),
        "10.0.0.7:65002"
    );
    assert_eq!(admin_addr("[::1]:65002").unwrap(), "[::1]:65002");
    assert_eq!(admin_addr("node-1:65002").unwrap(), "node-1:65002");
    for bad in ["127.0.0.1", ":65002", "host:port", "host:0", ""] {
        let err = admin_addr(bad).unwrap_err();
        assert!(err.contains("HOST:PORT"), "{bad}: {err}");
    }
}

#[test]
fn http_answers() {
    let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
    assert_eq!(parse_response("a:1", ok).unwrap(), "{}");
    let missing = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
    let err = parse_response("a:1", missing).unwrap_err();
    assert!(err.contains("404") && err.contains("--admin"), "{err}");
    let short = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}";
    assert!(parse_response("a:1", short).is_err());
    assert!(parse_response("a:1", b"HTTP/1.1 200 OK\r\n").is_err());
    let err = parse_status("a:1", "<html>").unwrap_err();
    assert!(err.contains("not a Pollen agent's status"), "{err}");
}

#[tokio::test]
async fn unreachable_agent_is_explained() {
    // A port nobody listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = get_status(&Endpoint::Tcp(format!("127.0.0.1:{port}")))
        .await
        .unwrap_err();
    assert!(
        err.contains("is `pollen agent` running? pass --admin ADDR"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let err = get_status(&Endpoint::Socket(dir.path().join("none.sock")))
        .await
        .unwrap_err();
    assert!(err.contains("pass --control-socket PATH"), "{err}");
}
