//! The TXT record of a `_gateway._tcp` service: what a node says about
//! itself before anyone has checked it.
//!
//! Keys (RFC 6763 §6: `key=value`, each string ≤ 255 bytes):
//! `id` node id (fingerprint of its key), `name`, `type`, `v` protocol
//! version, `links` comma-separated link kinds (`tcp,serial,usb,rfcomm`),
//! `bt` comma-separated Bluetooth selectors (`rfcomm:AA:BB:CC:DD:EE:FF/24`),
//! so a node's Bluetooth address and channel/PSM are known before any link
//! to it is opened.
//! Unknown keys are ignored so later versions can add some. Everything in
//! it is a claim: the node layer checks `id` against the key presented in
//! the Noise handshake before it believes any of it.

use crate::DiscoveryError;

/// Longest node name accepted (bytes of UTF-8).
pub const MAX_NAME_BYTES: usize = 63;
/// Longest node type accepted.
pub const MAX_TYPE_BYTES: usize = 16;
/// Most link kinds accepted in `links`.
pub const MAX_LINK_KINDS: usize = 8;
/// Longest link kind accepted.
pub const MAX_LINK_KIND_BYTES: usize = 12;
/// Longest `id` accepted (a node id is 32 characters with dashes).
pub const MAX_ID_BYTES: usize = 40;
/// Most Bluetooth selectors accepted in `bt`.
pub const MAX_BT_SELECTORS: usize = 4;
/// Longest Bluetooth selector accepted in `bt`.
pub const MAX_BT_SELECTOR_BYTES: usize = 48;
/// Most TXT strings looked at; a record with more is refused.
pub const MAX_TXT_ENTRIES: usize = 32;

/// What a node advertises about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advert {
    /// Node id (`gateway id`).
    pub node_id: String,
    /// Name people use (`--name`, default the host name).
    pub name: String,
    /// laptop, desktop, server, board, phone…
    pub node_type: String,
    /// Protocol version.
    pub version: u32,
    /// Link kinds it can be reached on (tcp, serial, usb, bt…).
    pub links: Vec<String>,
    /// Bluetooth selectors a peer can dial (`rfcomm:ADDR/CH`, `l2cap:ADDR/PSM`).
    pub bt: Vec<String>,
}

impl Advert {
    /// The TXT strings, checked the same way a browser checks them, so a
    /// node never advertises what its peers would refuse.
    pub fn to_txt(&self) -> Result<Vec<(String, String)>, DiscoveryError> {
        let txt = vec![
            ("id".to_string(), self.node_id.clone()),
            ("name".to_string(), self.name.clone()),
            ("type".to_string(), self.node_type.clone()),
            ("v".to_string(), self.version.to_string()),
            ("links".to_string(), self.links.join(",")),
        ];
        let mut txt = txt;
        if !self.bt.is_empty() {
            txt.push(("bt".to_string(), self.bt.join(",")));
        }
        let as_bytes: Vec<(String, Option<Vec<u8>>)> = txt
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone().into_bytes())))
            .collect();
        parse_txt(&as_bytes).map_err(|e| DiscoveryError::BadAdvert(e.to_string()))?;
        Ok(txt)
    }
}

/// Why a TXT record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxtError {
    /// A required key is absent.
    #[error("TXT record has no {0:?}")]
    Missing(&'static str),
    /// A value is too long.
    #[error("TXT {key:?} is {len} bytes, more than {max}")]
    TooLong {
        /// Key.
        key: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value has characters it may not have.
    #[error("TXT {key:?} is not valid: {why}")]
    Invalid {
        /// Key.
        key: &'static str,
        /// Why.
        why: String,
    },
    /// Too many strings in the record.
    #[error("TXT record has {0} strings, more than {MAX_TXT_ENTRIES}")]
    TooManyEntries(usize),
}

/// Parses and bounds-checks TXT properties (key, raw value) as received.
pub fn parse_txt(props: &[(String, Option<Vec<u8>>)]) -> Result<Advert, TxtError> {
    if props.len() > MAX_TXT_ENTRIES {
        return Err(TxtError::TooManyEntries(props.len()));
    }
    let get = |key: &'static str, max: usize| -> Result<Option<String>, TxtError> {
        let Some((_, val)) = props.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)) else {
            return Ok(None);
        };
        let raw = val.as_deref().unwrap_or_default();
        if raw.len() > max {
            return Err(TxtError::TooLong {
                key,
                len: raw.len(),
                max,
            });
        }
        let s = std::str::from_utf8(raw).map_err(|_| TxtError::Invalid {
            key,
            why: "not UTF-8".into(),
        })?;
        if s.chars().any(char::is_control) {
            return Err(TxtError::Invalid {
                key,
                why: "has control characters".into(),
            });
        }
        Ok(Some(s.to_string()))
    };
    let node_id = get("id", MAX_ID_BYTES)?.ok_or(TxtError::Missing("id"))?;
    if node_id.is_empty()
        || !node_id
            .chars()
            .all(|c| c == '-' || c.is_ascii_lowercase() || ('2'..='7').contains(&c))
    {
        return Err(TxtError::Invalid {
            key: "id",
            why: "a node id is lower-case base32 with dashes".into(),
        });
    }
    let name = get("name", MAX_NAME_BYTES)?.ok_or(TxtError::Missing("name"))?;
    if name.trim().is_empty() {
        return Err(TxtError::Invalid {
            key: "name",
            why: "empty".into(),
        });
    }
    let node_type = get("type", MAX_TYPE_BYTES)?.unwrap_or_default();
    if !node_type
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(TxtError::Invalid {
            key: "type",
            why: "letters, digits and '-' only".into(),
        });
    }
    let version = match get("v", 10)? {
        None => 0,
        Some(v) => v.parse().map_err(|_| TxtError::Invalid {
            key: "v",
            why: format!("{v:?} is not a number"),
        })?,
    };
    let links_raw = get("links", MAX_LINK_KINDS * (MAX_LINK_KIND_BYTES + 1))?.unwrap_or_default();
    let mut links = Vec::new();
    for kind in links_raw.split(',').filter(|k| !k.is_empty()) {
        if kind.len() > MAX_LINK_KIND_BYTES
            || !kind
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(TxtError::Invalid {
                key: "links",
                why: format!("{kind:?} is not a link kind"),
            });
        }
        if !links.iter().any(|l| l == kind) {
            links.push(kind.to_string());
        }
    }
    if links.len() > MAX_LINK_KINDS {
        return Err(TxtError::TooLong {
            key: "links",
            len: links.len(),
            max: MAX_LINK_KINDS,
        });
    }
    let bt_raw = get("bt", MAX_BT_SELECTORS * (MAX_BT_SELECTOR_BYTES + 1))?.unwrap_or_default();
    let mut bt = Vec::new();
    for sel in bt_raw.split(',').filter(|k| !k.is_empty()) {
        let ok_scheme = ["rfcomm:", "l2cap:", "ble:"]
            .iter()
            .any(|p| sel.starts_with(p));
        if !ok_scheme
            || sel.len() > MAX_BT_SELECTOR_BYTES
            || !sel
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ":/?=".contains(c))
        {
            return Err(TxtError::Invalid {
                key: "bt",
                why: format!("{sel:?} is not a Bluetooth selector"),
            });
        }
        bt.push(sel.to_string());
    }
    if bt.len() > MAX_BT_SELECTORS {
        return Err(TxtError::TooLong {
            key: "bt",
            len: bt.len(),
            max: MAX_BT_SELECTORS,
        });
    }
    Ok(Advert {
        node_id,
        name,
        node_type,
        version,
        links,
        bt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(kv: &[(&str, &str)]) -> Vec<(String, Option<Vec<u8>>)> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), Some(v.as_bytes().to_vec())))
            .collect()
    }

    const ID: &str = "abcd-efgh-ijkl-mnop-qrst-uvwx-yz23";

    #[test]
    fn a_complete_record_parses_and_round_trips() {
        let a = Advert {
            node_id: ID.into(),
            name: "alice's laptop".into(),
            node_type: "laptop".into(),
            version: 1,
            links: vec!["tcp".into(), "serial".into()],
            bt: vec!["rfcomm:00:1A:7D:DA:71:13/24".into()],
        };
        let txt = a.to_txt().unwrap();
        let raw: Vec<_> = txt
            .into_iter()
            .map(|(k, v)| (k, Some(v.into_bytes())))
            .collect();
        assert_eq!(parse_txt(&raw).unwrap(), a);
    }

    #[test]
    fn bluetooth_selectors_in_txt_are_checked_like_everything_else() {
        let with = |bt: &str| parse_txt(&props(&[("id", ID), ("name", "b"), ("bt", bt)]));
        let ok =
            with("rfcomm:00:1A:7D:DA:71:13/24,l2cap:00:1A:7D:DA:71:13/0x87?le=public").unwrap();
        assert_eq!(ok.bt.len(), 2);
        for bad in [
            "tcp:1.2.3.4:5",
            "rfcomm:../../etc",
            "rfcomm:a b",
            "rfcomm:1,rfcomm:2,rfcomm:3,rfcomm:4,rfcomm:5",
        ] {
            assert!(with(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn unknown_keys_are_ignored_and_optional_ones_default() {
        let a = parse_txt(&props(&[("id", ID), ("name", "bob"), ("future", "x")])).unwrap();
        assert_eq!(a.name, "bob");
        assert_eq!(a.version, 0);
        assert!(a.links.is_empty());
        assert_eq!(a.node_type, "");
    }

    #[test]
    fn a_record_without_id_or_name_is_refused() {
        assert_eq!(
            parse_txt(&props(&[("name", "bob")])),
            Err(TxtError::Missing("id"))
        );
        assert_eq!(
            parse_txt(&props(&[("id", ID)])),
            Err(TxtError::Missing("name"))
        );
        assert!(parse_txt(&props(&[("id", ID), ("name", "  ")])).is_err());
    }

    #[test]
    fn oversized_values_are_refused_with_their_length() {
        let long = "n".repeat(MAX_NAME_BYTES + 1);
        assert_eq!(
            parse_txt(&props(&[("id", ID), ("name", &long)])),
            Err(TxtError::TooLong {
                key: "name",
                len: MAX_NAME_BYTES + 1,
                max: MAX_NAME_BYTES
            })
        );
        let long_id = "a".repeat(200);
        assert!(matches!(
            parse_txt(&props(&[("id", &long_id), ("name", "x")])),
            Err(TxtError::TooLong { key: "id", .. })
        ));
        let many: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
        assert!(
            parse_txt(&props(&[
                ("id", ID),
                ("name", "x"),
                ("links", &many.join(","))
            ]))
            .is_err()
        );
        let flood: Vec<(String, Option<Vec<u8>>)> = (0..100)
            .map(|i| (format!("k{i}"), Some(b"v".to_vec())))
            .collect();
        assert_eq!(parse_txt(&flood), Err(TxtError::TooManyEntries(100)));
    }

    #[test]
    fn malformed_values_are_refused() {
        let bad = [
            ("id", "ABCD!"),
            ("id", ""),
            ("v", "one"),
            ("type", "lap top"),
            ("links", "tcp,USB"),
            ("name", "evil\nname"),
        ];
        for (k, v) in bad {
            let mut p = props(&[("id", ID), ("name", "x")]);
            p.retain(|(key, _)| key != k);
            p.push((k.to_string(), Some(v.as_bytes().to_vec())));
            assert!(parse_txt(&p).is_err(), "{k}={v:?} was accepted");
        }
        let not_utf8 = vec![
            ("id".to_string(), Some(ID.as_bytes().to_vec())),
            ("name".to_string(), Some(vec![0xff, 0xfe])),
        ];
        assert!(matches!(
            parse_txt(&not_utf8),
            Err(TxtError::Invalid { key: "name", .. })
        ));
    }

    #[test]
    fn a_node_never_advertises_what_peers_would_refuse() {
        let a = Advert {
            node_id: ID.into(),
            name: "x".repeat(100),
            node_type: "laptop".into(),
            version: 1,
            links: vec![],
            bt: Vec::new(),
        };
        assert!(a.to_txt().is_err());
    }
}
