//! Two nodes in two network namespaces joined by two veth pairs: real mDNS
//! across them, real TCP, real processes, no mocks.
//!
//! Needs root and iproute2 (`ip netns`). Elsewhere the test says so and
//! passes; with `CI=true` (our CI runs as root) it must run.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_gateway");

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd} {args:?}: {e}"))
}

/// A command line run inside namespace `ns` (split on spaces).
fn sh_in(ns: &str, cmd: &str) {
    let args: Vec<&str> = ["netns", "exec", ns]
        .into_iter()
        .chain(cmd.split(' '))
        .collect();
    ip(&args);
}

fn ip(args: &[&str]) {
    let out = run("ip", args);
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces, `a` and `b`, and two veth pairs between them:
/// 10.231.1.1 ↔ 10.231.1.2 and 10.231.2.1 ↔ 10.231.2.2. Deleted on drop.
struct Net {
    a: String,
    b: String,
    /// The veth ends in `a` (index 0: first pair).
    a_ends: [String; 2],
    b_ends: [String; 2],
}

impl Net {
    fn new() -> Option<Net> {
        let why = if !nix::unistd::geteuid().is_root() {
            Some("not root")
        } else if Command::new("ip").arg("-V").output().is_err() {
            Some("no `ip` (iproute2)")
        } else {
            None
        };
        if let Some(why) = why {
            assert!(
                std::env::var("CI").is_err(),
                "CI must run the netns test, but: {why}"
            );
            eprintln!("SKIPPED: the netns test needs root and iproute2 ({why})");
            return None;
        }
        let tag = std::process::id() % 100_000;
        let net = Net {
            a: format!("gw5a-{tag}"),
            b: format!("gw5b-{tag}"),
            a_ends: [format!("gw{tag}a1"), format!("gw{tag}a2")],
            b_ends: [format!("gw{tag}b1"), format!("gw{tag}b2")],
        };
        ip(&["netns", "add", &net.a]);
        ip(&["netns", "add", &net.b]);
        for ns in [&net.a, &net.b] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        for i in 0..2 {
            let (ea, eb) = (&net.a_ends[i], &net.b_ends[i]);
            ip(&[
                "link", "add", ea, "netns", &net.a, "type", "veth", "peer", "name", eb, "netns",
                &net.b,
            ]);
            let subnet = i + 1;
            ip(&[
                "-n",
                &net.a,
                "addr",
                "add",
                &format!("10.231.{subnet}.1/24"),
                "dev",
                ea,
            ]);
            ip(&[
                "-n",
                &net.b,
                "addr",
                "add",
                &format!("10.231.{subnet}.2/24"),
                "dev",
                eb,
            ]);
            ip(&["-n", &net.a, "link", "set", ea, "up"]);
            ip(&["-n", &net.b, "link", "set", eb, "up"]);
        }
        // The kernel marks a veth operationally up a moment after both ends
        // are up; mDNS responders skip interfaces that are not up yet.
        let deadline = Instant::now() + Duration::from_secs(10);
        for (ns, end) in net
            .a_ends
            .iter()
            .map(|e| (&net.a, e))
            .chain(net.b_ends.iter().map(|e| (&net.b, e)))
        {
            loop {
                let out = run("ip", &["-n", ns, "-br", "link", "show", "dev", end]);
                if String::from_utf8_lossy(&out.stdout).contains(" UP ") {
                    break;
                }
                assert!(Instant::now() < deadline, "{end} in {ns} never came up");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Some(net)
    }

    /// `gateway ARGS` inside namespace `ns`.
    fn gateway(&self, ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, BIN])
            .args(args)
            .env_remove("GATEWAY_STATE")
            .env_remove("RUST_LOG");
        c
    }

    fn gateway_ok(&self, ns: &str, args: &[&str]) -> String {
        let out = self.gateway(ns, args).output().expect("run gateway");
        assert!(
            out.status.success(),
            "gateway {args:?} in {ns} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
}

/// A `gateway serve` child; killed on drop.
struct Serve {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Serve {
    fn start(net: &Net, ns: &str, args: &[&str]) -> Serve {
        let mut child = net
            .gateway(ns, args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start gateway serve");
        let err = child.stderr.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let s = Serve { child, lines };
        s.wait_for("advertised over mDNS", Duration::from_secs(60));
        s
    }

    fn wait_for(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let mut seen = String::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(l) => {
                    seen.push_str(&l);
                    seen.push('\n');
                }
                Err(_) => break,
            }
        }
        panic!("serve did not print {needle:?} within {within:?}; it printed:\n{seen}");
    }

    /// SIGTERM: USER_STOP, withdraws the mDNS record (goodbye).
    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        // The child is `ip netns exec`, which execs gateway in place.
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

fn make_file(path: &Path, size: usize) -> String {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let data: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    blake3::hash(&data).to_hex().to_string()
}

fn peer<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|p| p["name"] == name)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn two_namespaces_find_each_other_by_mdns_and_send_by_name_over_both_veths() {
    let Some(net) = Net::new() else { return };
    let root = tempfile::tempdir().unwrap();
    let (sa, sb): (PathBuf, PathBuf) = (root.path().join("alice"), root.path().join("bob"));
    let inbox = root.path().join("inbox");
    // The two nodes trust each other's keys, as after `gateway pair`.
    let id_a = net
        .gateway_ok(&net.a, &["--state", s(&sa), "id"])
        .trim()
        .to_string();
    let id_b = net
        .gateway_ok(&net.b, &["--state", s(&sb), "id"])
        .trim()
        .to_string();
    net.gateway_ok(&net.a, &["--state", s(&sa), "trust", &id_b]);
    net.gateway_ok(&net.b, &["--state", s(&sb), "trust", &id_a]);
    let bob = ["--state", s(&sb), "--name", "bob", "--type", "laptop"];

    let serve = Serve::start(
        &net,
        &net.a,
        &[
            "--state",
            s(&sa),
            "--name",
            "alice",
            "--type",
            "server",
            "serve",
            "--dir",
            s(&inbox),
            "--listen",
            "tcp:0.0.0.0:7878",
        ],
    );

    // A DNS-SD browser that is not ours sees the advertisement.
    let foreign = zeroconf_browse(&net);
    if let Some(list) = &foreign {
        let a = list
            .as_array()
            .and_then(|l| l.iter().find(|s| s["txt"]["name"] == "alice"))
            .unwrap_or_else(|| panic!("python-zeroconf did not see alice: {list}"));
        assert_eq!(a["txt"]["id"], id_a.as_str());
        assert_eq!(a["txt"]["type"], "server");
        assert_eq!(a["port"], 7878);
    }

    // Discovery: bob browses and verifies; alice must be found in ≤ 3 s.
    let mut found_ms = Vec::new();
    for _ in 0..5 {
        // A responder multicasts a record at most once a second per interface
        // (RFC 6762 §6): back-to-back browses would measure that limit.
        std::thread::sleep(Duration::from_millis(1100));
        let out = net.gateway_ok(
            &net.b,
            &[&bob[..], &["peers", "--browse", "1.5", "--json"]].concat(),
        );
        let list: Value = serde_json::from_str(&out).expect("peers --json");
        let a = peer(&list, "alice").unwrap_or_else(|| panic!("alice not found: {out}"));
        assert_eq!(a["live"], true, "{a}");
        assert_eq!(a["node_id"], id_a.as_str());
        assert_eq!(a["type"], "server");
        assert!(!strings(&a["macs"]).is_empty(), "no MAC: {a}");
        let ips = strings(&a["ips"]);
        for want in ["10.231.1.1", "10.231.2.1"] {
            assert!(ips.iter().any(|i| i == want), "{want} not in {ips:?}");
        }
        found_ms.push(a["found_ms"].as_u64().expect("found_ms"));
    }
    found_ms.sort_unstable();
    eprintln!(
        "discovery across namespaces, 5 runs (ms): {found_ms:?}; median {}",
        found_ms[2]
    );
    assert!(
        found_ms[2] <= 3000,
        "median discovery {} ms > 3 s",
        found_ms[2]
    );

    // `send --to NAME` uses both veth pairs.
    let file = root.path().join("payload.bin");
    let hash = make_file(&file, 48 << 20);
    let out = net.gateway_ok(
        &net.b,
        &[&bob[..], &["send", s(&file), "--to", "alice", "--json"]].concat(),
    );
    let report: Value = serde_json::from_str(out.lines().last().unwrap()).expect("send --json");
    assert_eq!(report["verdict"], "ok", "{report}");
    assert_eq!(report["hash"], hash.as_str());
    assert_eq!(report["peer_name"], "alice");
    let links = report["links"].as_array().unwrap();
    let sels: Vec<&str> = links
        .iter()
        .map(|l| l["selector"].as_str().unwrap())
        .collect();
    assert_eq!(links.len(), 2, "{report}");
    for want in ["tcp:10.231.1.1:7878", "tcp:10.231.2.1:7878"] {
        assert!(sels.contains(&want), "{want} not in {sels:?}");
    }
    for l in links {
        assert!(
            l["bytes"].as_u64().unwrap() > 0,
            "a link carried nothing: {report}"
        );
    }
    let received = blake3::hash(&std::fs::read(inbox.join("payload.bin")).unwrap());
    assert_eq!(received.to_hex().as_str(), hash);

    // Alice's peerstore holds bob from his Hello.
    let out = net.gateway_ok(
        &net.a,
        &["--state", s(&sa), "peers", "--browse", "0", "--json"],
    );
    let list: Value = serde_json::from_str(&out).unwrap();
    let b = peer(&list, "bob").unwrap_or_else(|| panic!("bob not in alice's peerstore: {out}"));
    assert_eq!(b["node_id"], id_b.as_str());
    assert_eq!(b["type"], "laptop");
    assert!(!strings(&b["macs"]).is_empty(), "{b}");
    assert!(
        strings(&b["ips"]).iter().any(|i| i.starts_with("10.231.")),
        "{b}"
    );

    // Alice's first link moves to a new subnet in the middle of a transfer
    // (a DHCP renew): the old path goes silent, bob's sender declares it
    // down, finds alice again and carries on over the new address, without
    // anyone restarting. The paths are slowed so the transfer outlives it.
    for end in &net.b_ends {
        sh_in(
            &net.b,
            &format!("tc qdisc add dev {end} root tbf rate 16mbit burst 32kbit latency 400ms"),
        );
    }
    let big = root.path().join("big.bin");
    let hash = make_file(&big, 96 << 20);
    let sender = net
        .gateway(
            &net.b,
            &[&bob[..], &["send", s(&big), "--to", "alice", "--json"]].concat(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the sender");
    std::thread::sleep(Duration::from_secs(3));
    sh_in(
        &net.a,
        &format!("ip addr del 10.231.1.1/24 dev {}", net.a_ends[0]),
    );
    sh_in(
        &net.a,
        &format!("ip addr add 10.231.3.1/24 dev {}", net.a_ends[0]),
    );
    sh_in(
        &net.b,
        &format!("ip addr add 10.231.3.2/24 dev {}", net.b_ends[0]),
    );
    let out = sender.wait_with_output().expect("the sender finishes");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "send failed: {stderr}");
    let report: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap())
            .expect("send --json");
    assert_eq!(report["hash"], hash.as_str(), "{report}");
    let moved = "tcp:10.231.3.1:7878";
    let new_link = report["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["selector"] == moved)
        .unwrap_or_else(|| panic!("the moved address was never used: {report}\n{stderr}"));
    assert!(new_link["bytes"].as_u64().unwrap() > 0, "{report}");
    eprintln!("moved mid-transfer: {report}");
    // And a browse shows alice at her new address.
    let out = net.gateway_ok(
        &net.b,
        &[&bob[..], &["peers", "--browse", "2", "--json"]].concat(),
    );
    let list: Value = serde_json::from_str(&out).unwrap();
    let live = peer(&list, "alice")
        .map(|a| strings(&a["live_links"]))
        .unwrap_or_default();
    assert!(live.iter().any(|l| l == moved), "{live:?}");

    // Alice stops: her goodbye takes her off the live list.
    serve.stop();
    let out = net.gateway_ok(
        &net.b,
        &[&bob[..], &["peers", "--browse", "1.5", "--json"]].concat(),
    );
    let list: Value = serde_json::from_str(&out).unwrap();
    let a = peer(&list, "alice").expect("alice stays known");
    assert_eq!(a["live"], false, "{a}");
    if foreign.is_some() {
        let after = zeroconf_browse(&net).unwrap();
        assert_eq!(
            after,
            serde_json::json!([]),
            "alice's record outlived her goodbye"
        );
    }
}

/// What python-zeroconf (an independent DNS-SD implementation) sees from
/// namespace `b` in 2 s; `None` if it is not installed (CI installs it).
fn zeroconf_browse(net: &Net) -> Option<Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/dnssd_browse.py");
    let has = run("python3", &["-c", "import zeroconf"]).status.success();
    if !has {
        assert!(
            std::env::var("CI").is_err(),
            "CI must check the advertisement with python-zeroconf (pip install zeroconf)"
        );
        eprintln!(
            "SKIPPED: python-zeroconf is not installed; `pip install zeroconf` to check interop"
        );
        return None;
    }
    let out = run(
        "ip",
        &[
            "netns",
            "exec",
            &net.b,
            "python3",
            script,
            "_gateway._tcp.local.",
            "2",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("dnssd_browse.py prints JSON"))
}
