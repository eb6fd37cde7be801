//! `gateway id`, `peers`, `trust`, `untrust`, `pair`, and finding the
//! receiver of `send --to NAME`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use gateway_link::Registry;
use gateway_node::discover::{self, DiscoverOptions};
use gateway_node::send::SendOptions;
use gateway_node::{NodeConfig, NodeState, trust};
use gateway_secure::{NodeId, PairingCode};

use crate::Ctx;

pub(crate) fn id(ctx: &Ctx, json: bool) -> Result<ExitCode> {
    let st = ctx.open()?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "node_id": st.node_id,
                "name": st.name,
                "type": st.node_type,
                "public_key": hex::encode(st.key.public()),
                "state": st.dir,
            })
        );
    } else {
        println!("{}", st.node_id);
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn list(ctx: &Ctx, json: bool, browse_s: f64) -> Result<ExitCode> {
    let st = ctx.open()?;
    let window = Duration::try_from_secs_f64(browse_s.max(0.0))
        .with_context(|| format!("--browse {browse_s} is not a number of seconds"))?;
    let found = if window.is_zero() {
        None
    } else {
        let reg = Arc::new(gateway_node::registry::default_registry());
        let d = discover::discover(
            &st,
            &ctx.cfg,
            reg,
            &DiscoverOptions {
                window,
                want: None,
                settle: Duration::ZERO,
                mdns: true,
                scan: true,
            },
        )
        .await?;
        if !ctx.quiet && !json {
            if let Some(e) = &d.mdns_error {
                eprintln!("gateway: mDNS unavailable: {e}");
            }
            for f in &d.flagged {
                eprintln!("gateway: warning: {f}");
            }
        }
        Some(d)
    };
    let peers = st.store().peers()?;
    let statics = st.store().static_addrs()?;
    // Live: verified in this browse; the paths that answered and when.
    let live = |id: &str| -> Option<(Vec<String>, u64)> {
        let d = found.as_ref()?;
        let paths: Vec<&discover::Verified> =
            d.verified.iter().filter(|v| v.id.as_str() == id).collect();
        let first = paths.iter().map(|v| v.after).min()?;
        Some((
            paths.iter().map(|v| v.selector.clone()).collect(),
            first.as_millis() as u64,
        ))
    };
    if json {
        let rows: Vec<_> = peers
            .iter()
            .map(|p| {
                let l = live(&p.node_id);
                let static_addrs: Vec<&str> = statics
                    .iter()
                    .filter(|(n, _)| *n == p.name)
                    .map(|(_, s)| s.as_str())
                    .collect();
                serde_json::json!({
                    "node_id": p.node_id, "name": p.name, "type": p.node_type, "trust": p.trust,
                    "macs": p.macs, "ips": p.ips, "links": p.links, "static": static_addrs,
                    "flag": p.flag,
                    "live": l.is_some(),
                    "live_links": l.as_ref().map(|x| x.0.clone()).unwrap_or_default(),
                    "found_ms": l.as_ref().map(|x| x.1),
                    "first_seen_ms": p.first_seen_ms, "last_seen_ms": p.last_seen_ms,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(ExitCode::SUCCESS);
    }
    if peers.is_empty() && statics.is_empty() {
        println!(
            "no peers known yet; start `gateway serve` on another node on this network, or `gateway peers add NAME tcp:HOST:7878`"
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<32} {:<16} {:<8} {:<9} {:<5} ADDRESSES",
        "NODE ID", "NAME", "TYPE", "TRUST", "LIVE"
    );
    for p in &peers {
        let l = live(&p.node_id);
        let addrs = match &l {
            Some((paths, _)) => paths.join(" "),
            None => p.ips.join(" "),
        };
        println!(
            "{:<32} {:<16} {:<8} {:<9} {:<5} {}",
            p.node_id,
            p.name,
            if p.node_type.is_empty() {
                "-"
            } else {
                &p.node_type
            },
            p.trust,
            match (&found, &l) {
                (None, _) => "?",
                (Some(_), Some(_)) => "yes",
                (Some(_), None) => "no",
            },
            if addrs.is_empty() {
                "-".to_string()
            } else {
                addrs
            }
        );
        if let Some(f) = &p.flag {
            println!("  ! {f}");
        }
    }
    for (name, sel) in &statics {
        if !peers.iter().any(|p| p.name == *name) {
            println!(
                "{:<32} {:<16} {:<8} {:<9} {:<5} {sel} (static)",
                "-", name, "-", "-", "?"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn add(ctx: &Ctx, name: &str, selectors: &[String]) -> Result<ExitCode> {
    let st = ctx.open()?;
    if name.is_empty() || name.len() > gateway_discovery::txt::MAX_NAME_BYTES {
        bail!(
            "a peer name is 1 to {} bytes",
            gateway_discovery::txt::MAX_NAME_BYTES
        );
    }
    for sel in selectors {
        gateway_link::Selector::parse(sel)
            .with_context(|| format!("{sel:?} is not a link selector (e.g. tcp:10.8.0.2:7878)"))?;
        let added = st
            .store()
            .add_static_addr(name, sel, gateway_node::state::now_ms())?;
        println!(
            "{name}: {sel} {}",
            if added { "added" } else { "was already there" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn remove(ctx: &Ctx, name: &str, selectors: &[String]) -> Result<ExitCode> {
    let st = ctx.open()?;
    let removed = if selectors.is_empty() {
        st.store().remove_static_addrs(name, None)?
    } else {
        let mut n = 0;
        for sel in selectors {
            n += st.store().remove_static_addrs(name, Some(sel))?;
        }
        n
    };
    if removed == 0 {
        bail!("no static address of {name:?} matched; `gateway peers` lists them");
    }
    println!("{name}: {removed} static address(es) removed");
    Ok(ExitCode::SUCCESS)
}

/// Splits `send --to` values into links and at most one peer to find, and
/// finds it: every verified path to it becomes a link.
pub(crate) async fn send_targets(
    st: &NodeState,
    cfg: &NodeConfig,
    reg: Arc<Registry>,
    path: PathBuf,
    to: Vec<String>,
    mdns: bool,
    quiet: bool,
) -> Result<(SendOptions, Option<Duration>)> {
    // A link selector always has a scheme (tcp:…); a name or node id has no ':'.
    let (links, names): (Vec<String>, Vec<String>) = to.into_iter().partition(|t| t.contains(':'));
    let mut opts = SendOptions::new(path, links);
    let name = match names.as_slice() {
        [] => return Ok((opts, None)),
        [one] => one,
        many => bail!(
            "one receiver per send: --to names {} peers ({}); give one name or id, plus links if you like",
            many.len(),
            many.join(", ")
        ),
    };
    let route = discover::resolve(st, cfg, reg, name, mdns).await?;
    if !quiet {
        for w in &route.warnings {
            eprintln!("gateway: warning: {w}");
        }
        eprintln!(
            "gateway: {} ({}) found in {:.2} s on {}",
            route.name,
            route.peer_id,
            route.found_after.as_secs_f64(),
            route.links.join(", ")
        );
    }
    for l in route.links {
        if !opts.to.contains(&l) {
            opts.to.push(l);
        }
    }
    opts.extra = route.extra;
    opts.expect = Some(route.peer_id);
    opts.lookup = Some(gateway_node::send::Lookup {
        query: name.clone(),
        mdns,
    });
    Ok((opts, Some(route.found_after)))
}

pub(crate) fn set(ctx: &Ctx, query: &str, trusted: bool) -> Result<ExitCode> {
    let st = ctx.open()?;
    let (id, name) = match trust::find_peer(&st, query) {
        Ok(p) => (NodeId::parse(&p.node_id)?, Some(p.name)),
        // An id never seen yet may be trusted ahead of time (like known_hosts).
        Err(_) if trusted => (
            NodeId::parse(query).with_context(|| {
                format!("{query:?} is neither a known peer nor a node id (`gateway id` on that node prints it)")
            })?,
            None,
        ),
        Err(e) => return Err(e.into()),
    };
    let level = if trusted {
        trust::PAIRED
    } else {
        trust::UNTRUSTED
    };
    trust::set_trust(&st, &id, name.as_deref().filter(|n| !n.is_empty()), level)?;
    println!("{id} is now {level}");
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn pair(
    ctx: &Ctx,
    code: Option<String>,
    listen: String,
    to: Option<String>,
) -> Result<ExitCode> {
    let st = ctx.open()?;
    let cfg = ctx.cfg.clone();
    let reg = Arc::new(gateway_node::registry::default_registry());
    let result = match code {
        None => {
            if to.is_some() {
                bail!("--to needs the CODE printed by `gateway pair` on the other node");
            }
            let code = PairingCode::generate();
            let id = st.node_id.clone();
            let quiet = ctx.quiet;
            gateway_node::pair::listen(&st, &cfg, reg, &listen, &code, |sel| {
                if !quiet {
                    eprintln!("gateway: this node is {id}");
                    eprintln!("gateway: waiting on {sel}; on the other node run:");
                    eprintln!(
                        "    gateway pair {} --to tcp:<this-host>:{}",
                        code.as_str(),
                        sel.rsplit(':').next().unwrap_or("7879")
                    );
                }
                println!("{}", code.as_str());
            })
            .await?
        }
        Some(code) => {
            let Some(to) = to else {
                bail!(
                    "give the other node's pairing listener with --to, e.g. --to tcp:192.168.1.7:7879"
                );
            };
            let code = PairingCode::parse(&code)?;
            gateway_node::pair::connect(&st, &cfg, reg, &to, &code).await?
        }
    };
    // Even with --quiet: the words are the result, and comparing them is
    // what makes the pairing safe.
    eprintln!(
        "gateway: paired with {} ({}); check that both sides show the same words: {}",
        result.peer_name, result.peer_id, result.sas
    );
    Ok(ExitCode::SUCCESS)
}
