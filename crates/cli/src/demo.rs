//! `gateway demo`: a receiver and a sender in one process, joined by real
//! loopback TCP links, moving a generated file; prints the verdict.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use gateway_node::serve::ServeOptions;
use gateway_node::{NodeConfig, NodeState};

use crate::{human, print_report, send_with_progress};
use gateway_node::send::SendOptions;

pub(crate) struct DemoOptions {
    pub size: u64,
    pub links: usize,
    pub rates: String,
    pub keep: bool,
    pub json: bool,
    pub quiet: bool,
}

pub(crate) async fn run(o: DemoOptions) -> Result<std::process::ExitCode> {
    if o.links == 0 {
        bail!("--links must be at least 1");
    }
    let rates: Vec<Option<String>> = if o.rates.trim().eq_ignore_ascii_case("none") {
        vec![None; o.links]
    } else {
        let given: Vec<String> = o.rates.split(',').map(|s| s.trim().to_string()).collect();
        (0..o.links)
            .map(|i| given.get(i).or(given.last()).cloned())
            .collect()
    };
    let root = tempfile::Builder::new()
        .prefix("gateway-demo-")
        .tempdir()
        .context("cannot create a temporary directory for the demo")?;
    let base = root.path().to_path_buf();
    let src_dir = base.join("outbox");
    let dst_dir = base.join("inbox");
    std::fs::create_dir_all(&src_dir)?;
    let src = src_dir.join("demo.bin");
    let say = |s: String| {
        if !o.quiet {
            eprintln!("{s}");
        }
    };
    say(format!(
        "demo: generating {} of test data in {}",
        human(o.size),
        src.display()
    ));
    generate(&src, o.size)?;

    // The receiving node, listening on one loopback port per link.
    let receiver_state = NodeState::open(&base.join("receiver-state"))?;
    let sender_state = NodeState::open(&base.join("sender-state"))?;
    // Demo-only trust: the two nodes trust each other's keys as if paired
    // (`gateway pair` does this with a code between two real boxes).
    for (me, other) in [
        (&receiver_state, &sender_state),
        (&sender_state, &receiver_state),
    ] {
        let id = gateway_secure::NodeId::parse(&other.node_id)?;
        gateway_node::trust::set_trust(me, &id, Some("demo"), gateway_node::trust::PAIRED)?;
    }
    let reg = Arc::new(gateway_node::registry::default_registry());
    let listen = vec!["tcp:127.0.0.1:0".to_string(); o.links];
    let server = gateway_node::serve::start(
        receiver_state,
        NodeConfig::default(),
        reg.clone(),
        ServeOptions {
            dir: dst_dir.clone(),
            listen,
            // Both nodes are in this process and know each other's links.
            advertise: false,
        },
    )
    .await?;
    let to: Vec<String> = server
        .local_selectors
        .iter()
        .zip(&rates)
        .map(|(sel, rate)| match rate {
            Some(r) => format!("{sel}?rate={r}"),
            None => sel.clone(),
        })
        .collect();
    say(format!(
        "demo: receiver listening on {}; sending over {} link(s)",
        server.local_selectors.join(", "),
        to.len()
    ));

    let report = send_with_progress(
        sender_state,
        NodeConfig::default(),
        reg,
        SendOptions::new(src.clone(), to),
        o.quiet || o.json,
        None,
    )
    .await;
    server.shutdown().await?;
    let report = report?;

    // The verdict, checked independently of the protocol's own.
    let got = dst_dir.join("demo.bin");
    let want_hash = gateway_node::tree::hash_file(&src)?;
    let got_hash = gateway_node::tree::hash_file(&got)
        .with_context(|| format!("the received file {} is missing", got.display()))?;
    let ok = want_hash == got_hash && hex::encode(want_hash) == report.hash;
    if !o.json {
        print_report(&report, false);
        println!(
            "demo: {} — {} arrived in {} with BLAKE3 {}",
            if ok { "OK" } else { "MISMATCH" },
            human(report.bytes_total),
            got.display(),
            &hex::encode(got_hash)[..16]
        );
    } else {
        print_report(&report, true);
    }
    if o.keep {
        let kept = root.keep();
        say(format!("demo: kept {}", kept.display()));
    }
    if !ok {
        bail!("the received file differs from the source");
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Writes `size` bytes of incompressible data (BLAKE3 in XOF mode) to `path`.
fn generate(path: &Path, size: u64) -> Result<()> {
    let f =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let mut xof = blake3::Hasher::new()
        .update(b"gateway demo data")
        .finalize_xof();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        xof.fill(&mut buf[..n]);
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    w.flush()?;
    Ok(())
}
