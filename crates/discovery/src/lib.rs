//! mDNS/DNS-SD for gateway nodes: a server advertises `_gateway._tcp.local.`
//! with its identity in TXT; a client browses and gets [`Sighting`]s.
//!
//! Nothing here is trusted: a sighting is a claim (name, node id, addresses)
//! that the node layer checks by connecting, running the Noise handshake and
//! comparing the key with the claimed id. Bounds: TXT values are checked
//! ([`txt`]), and a browser tracks at most `max_services` instances, so an
//! mDNS flood costs bounded memory here (mdns-sd's own cache expires records
//! by their TTL).
//!
//! mdns-sd runs its responder on its own thread with its own sockets on
//! every interface, follows interfaces and addresses as they come and go
//! (checked every [`IP_CHECK_INTERVAL_S`] s) and sends goodbye packets on
//! unregister.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo, UnregisterStatus};

pub mod local;
pub mod txt;

pub use txt::{Advert, TxtError, parse_txt};

/// The DNS-SD service type every node advertises.
pub const SERVICE_TYPE: &str = "_gateway._tcp.local.";
/// How often the responder re-reads the interfaces (s).
pub const IP_CHECK_INTERVAL_S: u32 = 2;
/// Default bound on instances one browser tracks.
pub const MAX_SERVICES_DEFAULT: usize = 256;

/// Discovery failures.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The mDNS daemon could not start or answer.
    #[error("mDNS: {0}")]
    Mdns(String),
    /// What we would advertise is not valid.
    #[error("cannot advertise this node: {0}")]
    BadAdvert(String),
}

impl From<mdns_sd::Error> for DiscoveryError {
    fn from(e: mdns_sd::Error) -> Self {
        Self::Mdns(e.to_string())
    }
}

/// A node seen on the network (unverified).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sighting {
    /// DNS-SD instance full name (unique on the link).
    pub instance: String,
    /// Its TXT, parsed and bounds-checked.
    pub advert: Advert,
    /// Addresses to dial (IPv4 first; loopback kept only if nothing else).
    pub addrs: Vec<SocketAddr>,
}

/// What a browser reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrowseEvent {
    /// A node appeared, or its addresses or TXT changed.
    Found(Sighting),
    /// A node withdrew (goodbye) or expired.
    Gone {
        /// Instance full name.
        instance: String,
    },
    /// A record was ignored: malformed TXT, or too many instances.
    Ignored {
        /// Instance full name.
        instance: String,
        /// Why, in words.
        why: String,
    },
}

fn daemon() -> Result<ServiceDaemon, DiscoveryError> {
    let d = ServiceDaemon::new()?;
    d.set_ip_check_interval(IP_CHECK_INTERVAL_S)?;
    Ok(d)
}

/// The DNS-SD instance label for a node: its name and the start of its id,
/// so two nodes with one name stay apart.
pub fn instance_label(advert: &Advert) -> String {
    let mut name: String = advert.name.clone();
    // A DNS label is at most 63 bytes; keep room for " (abcd-efgh)".
    while name.len() > 50 {
        name.pop();
    }
    let short: String = advert.node_id.chars().take(9).collect();
    format!("{name} ({short})")
}

/// A running advertisement. Withdrawn (goodbye packets) by [`Advertiser::stop`]
/// or, best effort, on drop.
pub struct Advertiser {
    daemon: ServiceDaemon,
    fullname: String,
    stopped: bool,
}

impl std::fmt::Debug for Advertiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Advertiser")
            .field("fullname", &self.fullname)
            .finish()
    }
}

impl Advertiser {
    /// Advertises `advert` for a listener on `port`. `bound` is the
    /// listener's address: unspecified (0.0.0.0/::) advertises every
    /// interface's addresses and follows them as they change; a specific
    /// address advertises only that one.
    pub fn start(advert: &Advert, port: u16, bound: IpAddr) -> Result<Self, DiscoveryError> {
        let props = advert.to_txt()?;
        let host: String = advert
            .node_id
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(10)
            .collect();
        let host = format!("gw-{host}.local.");
        let label = instance_label(advert);
        let info = if bound.is_unspecified() {
            ServiceInfo::new(SERVICE_TYPE, &label, &host, (), port, &props[..])?.enable_addr_auto()
        } else {
            ServiceInfo::new(SERVICE_TYPE, &label, &host, bound, port, &props[..])?
        };
        let fullname = info.get_fullname().to_string();
        let daemon = daemon()?;
        daemon.register(info)?;
        tracing::info!(service = %fullname, port, "advertising over mDNS");
        Ok(Self {
            daemon,
            fullname,
            stopped: false,
        })
    }

    /// The advertised instance's full name.
    pub fn fullname(&self) -> &str {
        &self.fullname
    }

    /// Withdraws the service (goodbye packets) and stops the responder.
    pub async fn stop(mut self) {
        self.stopped = true;
        if let Ok(rx) = self.daemon.unregister(&self.fullname) {
            match tokio::time::timeout(Duration::from_secs(2), rx.recv_async()).await {
                Ok(Ok(UnregisterStatus::OK)) => tracing::debug!("mDNS goodbye sent"),
                other => tracing::debug!("mDNS unregister: {other:?}"),
            }
        }
        if let Ok(rx) = self.daemon.shutdown() {
            let _ = tokio::time::timeout(Duration::from_secs(1), rx.recv_async()).await;
        }
    }
}

impl Drop for Advertiser {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.daemon.unregister(&self.fullname);
            let _ = self.daemon.shutdown();
        }
    }
}

/// Browses for `_gateway._tcp` nodes.
pub struct Browser {
    daemon: ServiceDaemon,
    rx: mdns_sd::Receiver<ServiceEvent>,
    known: HashSet<String>,
    max_services: usize,
    told_overflow: bool,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("known", &self.known.len())
            .finish()
    }
}

impl Browser {
    /// Starts browsing; tracks at most `max_services` instances.
    pub fn start(max_services: usize) -> Result<Self, DiscoveryError> {
        let daemon = daemon()?;
        let rx = daemon.browse(SERVICE_TYPE)?;
        Ok(Self {
            daemon,
            rx,
            known: HashSet::new(),
            max_services,
            told_overflow: false,
        })
    }

    /// The next event; `None` once the daemon is gone.
    pub async fn next(&mut self) -> Option<BrowseEvent> {
        loop {
            let ev = self.rx.recv_async().await.ok()?;
            if let Some(e) = self.map(ev) {
                return Some(e);
            }
        }
    }

    fn map(&mut self, ev: ServiceEvent) -> Option<BrowseEvent> {
        match ev {
            ServiceEvent::ServiceResolved(r) => {
                let instance = r.fullname.clone();
                if !self.known.contains(&instance) && self.known.len() >= self.max_services {
                    if self.told_overflow {
                        return None;
                    }
                    self.told_overflow = true;
                    return Some(BrowseEvent::Ignored {
                        instance,
                        why: format!(
                            "more than {} gateway services on the network; ignoring the rest",
                            self.max_services
                        ),
                    });
                }
                let props: Vec<(String, Option<Vec<u8>>)> = r
                    .txt_properties
                    .iter()
                    .map(|p| (p.key().to_string(), p.val().map(<[u8]>::to_vec)))
                    .collect();
                let advert = match parse_txt(&props) {
                    Ok(a) => a,
                    Err(e) => {
                        return Some(BrowseEvent::Ignored {
                            instance,
                            why: e.to_string(),
                        });
                    }
                };
                let ips: Vec<IpAddr> = r.addresses.iter().map(|a| a.to_ip_addr()).collect();
                let addrs = order_addrs(&ips, r.port);
                if addrs.is_empty() {
                    return None;
                }
                self.known.insert(instance.clone());
                Some(BrowseEvent::Found(Sighting {
                    instance,
                    advert,
                    addrs,
                }))
            }
            ServiceEvent::ServiceRemoved(_, instance) => self
                .known
                .remove(&instance)
                .then_some(BrowseEvent::Gone { instance }),
            _ => None,
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.daemon.stop_browse(SERVICE_TYPE);
        let _ = self.daemon.shutdown();
    }
}

/// Dialable addresses first (IPv4 before IPv6), loopback only when nothing
/// else is there (two nodes on one host), link-local IPv6 never (it needs a
/// scope id a selector cannot carry).
fn order_addrs(ips: &[IpAddr], port: u16) -> Vec<SocketAddr> {
    let mut dial: Vec<IpAddr> = ips.iter().copied().filter(local::dialable).collect();
    if dial.is_empty() {
        dial = ips.iter().copied().filter(IpAddr::is_loopback).collect();
    }
    dial.sort_by_key(|ip| (ip.is_ipv6(), *ip));
    dial.dedup();
    dial.into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_ordered_v4_first_without_link_local() {
        let ips: Vec<IpAddr> = ["fe80::1", "fd00::2", "10.0.0.9", "10.0.0.2", "127.0.0.1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let got: Vec<String> = order_addrs(&ips, 7878)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, ["10.0.0.2:7878", "10.0.0.9:7878", "[fd00::2]:7878"]);
        let lo: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap(), "fe80::1".parse().unwrap()];
        assert_eq!(order_addrs(&lo, 1).len(), 1);
    }

    #[test]
    fn instance_labels_fit_a_dns_label_and_keep_two_same_names_apart() {
        let mut a = Advert {
            node_id: "abcd-efgh-ijkl-mnop-qrst-uvwx-yz23".into(),
            name: "é".repeat(40),
            node_type: String::new(),
            version: 1,
            links: vec![],
            bt: Vec::new(),
        };
        let l = instance_label(&a);
        assert!(l.len() <= 63, "{l}");
        assert!(l.ends_with("(abcd-efgh)"));
        let first = instance_label(&a);
        a.node_id = "zzzz-efgh-ijkl-mnop-qrst-uvwx-yz23".into();
        assert_ne!(first, instance_label(&a));
    }
}
