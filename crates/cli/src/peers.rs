//! `gateway id`, `peers`, `trust`, `untrust`, `pair`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use gateway_node::{NodeConfig, trust};
use gateway_secure::{NodeId, PairingCode};

use crate::open_state;

pub(crate) fn id(state_dir: &Path, json: bool) -> Result<ExitCode> {
    let st = open_state(state_dir)?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "node_id": st.node_id,
                "name": st.name,
                "public_key": hex::encode(st.key.public()),
                "state": st.dir,
            })
        );
    } else {
        println!("{}", st.node_id);
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn list(state_dir: &Path, json: bool) -> Result<ExitCode> {
    let st = open_state(state_dir)?;
    let peers = st.store().peers()?;
    if json {
        let rows: Vec<_> = peers
            .iter()
            .map(|p| {
                serde_json::json!({
                    "node_id": p.node_id, "name": p.name, "type": p.node_type, "trust": p.trust,
                    "ips": p.ips, "links": p.links,
                    "first_seen_ms": p.first_seen_ms, "last_seen_ms": p.last_seen_ms,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(ExitCode::SUCCESS);
    }
    if peers.is_empty() {
        println!("no peers seen yet; `gateway pair` to pair with one");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<26} {:<20} {:<10} LAST ADDRESS",
        "NODE ID", "NAME", "TRUST"
    );
    for p in peers {
        println!(
            "{:<26} {:<20} {:<10} {}",
            p.node_id,
            p.name,
            p.trust,
            p.ips.first().map(String::as_str).unwrap_or("-")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn set(state_dir: &Path, query: &str, trusted: bool) -> Result<ExitCode> {
    let st = open_state(state_dir)?;
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
    state_dir: &Path,
    cfg: NodeConfig,
    code: Option<String>,
    listen: String,
    to: Option<String>,
) -> Result<ExitCode> {
    let st = open_state(state_dir)?;
    let reg = Arc::new(gateway_node::registry::default_registry());
    let result = match code {
        None => {
            if to.is_some() {
                bail!("--to needs the CODE printed by `gateway pair` on the other node");
            }
            let code = PairingCode::generate();
            let id = st.node_id.clone();
            gateway_node::pair::listen(&st, &cfg, reg, &listen, &code, |sel| {
                eprintln!("gateway: this node is {id}");
                eprintln!("gateway: waiting on {sel}; on the other node run:");
                eprintln!(
                    "    gateway pair {} --to tcp:<this-host>:{}",
                    code.as_str(),
                    sel.rsplit(':').next().unwrap_or("7879")
                );
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
    eprintln!(
        "gateway: paired with {} ({}); check that both sides show the same words: {}",
        result.peer_name, result.peer_id, result.sas
    );
    Ok(ExitCode::SUCCESS)
}
