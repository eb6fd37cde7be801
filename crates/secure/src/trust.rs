//! The trust policy: who may open a FILE stream. Pure logic; the node keeps
//! the trust strings in its peerstore.

use crate::NodeId;

/// Who may exchange files with this node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrustPolicy {
    /// Only peers paired by code or trusted by id (the default).
    #[default]
    Paired,
    /// The first key seen for a peer name is pinned; a changed key is refused.
    Tofu,
    /// Any authenticated key (labs and tests).
    Any,
}

impl std::str::FromStr for TrustPolicy {
    type Err = crate::SecureError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "paired" => Ok(TrustPolicy::Paired),
            "tofu" => Ok(TrustPolicy::Tofu),
            "any" => Ok(TrustPolicy::Any),
            _ => Err(crate::SecureError::BadPolicy(s.to_string())),
        }
    }
}

impl std::fmt::Display for TrustPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TrustPolicy::Paired => "paired",
            TrustPolicy::Tofu => "tofu",
            TrustPolicy::Any => "any",
        })
    }
}

/// The outcome for one presented key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// May open a FILE stream.
    Trusted,
    /// May say Hello, nothing more; `hint` says how to pair.
    Untrusted {
        /// What the user can do.
        hint: String,
    },
    /// A pinned name presents another key (TOFU): refused loudly.
    KeyChanged {
        /// The peer name.
        name: String,
        /// The key pinned for it.
        known: NodeId,
        /// The key presented now.
        presented: NodeId,
    },
}

/// Decides for `presented` (named `name` in its Hello), given its trust
/// string in the peerstore (`paired`, `tofu`, `untrusted`, or never seen)
/// and, for TOFU, the id first pinned for that name.
///
/// | known trust            | `paired`  | `tofu`                               | `any`   |
/// |------------------------|-----------|--------------------------------------|---------|
/// | `paired`               | trusted   | trusted                              | trusted |
/// | `tofu` or never seen   | untrusted | trusted, unless the name is pinned to another id: key changed | trusted |
/// | `untrusted` (or other) | untrusted | untrusted                            | trusted |
///
/// The node records every peer it meets as `untrusted` unless it is trusted
/// otherwise, which is why `any` must override it.
pub fn decide(
    policy: TrustPolicy,
    presented: &NodeId,
    known_trust: Option<&str>,
    name: &str,
    id_pinned_for_name: Option<&NodeId>,
) -> Decision {
    let hint = || Decision::Untrusted {
        hint: format!(
            "this node does not trust {presented} yet: run `gateway pair` on the receiver and `gateway pair CODE --to ...` here, or set --trust tofu (or run `gateway trust {presented}` on the receiver)"
        ),
    };
    match known_trust {
        Some("paired") => return Decision::Trusted,
        None | Some("tofu") => {}
        // `untrusted`, or a string this version does not know: only `any` lets it in.
        Some(_) if policy == TrustPolicy::Any => return Decision::Trusted,
        Some(_) => return hint(),
    }
    match policy {
        TrustPolicy::Any => Decision::Trusted,
        TrustPolicy::Paired => hint(),
        TrustPolicy::Tofu => match id_pinned_for_name {
            Some(pinned) if pinned != presented => Decision::KeyChanged {
                name: name.to_string(),
                known: pinned.clone(),
                presented: presented.clone(),
            },
            _ => Decision::Trusted,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_table_holds() {
        let a = NodeId::from_public(&[1; 32]);
        let b = NodeId::from_public(&[2; 32]);
        use Decision::*;
        use TrustPolicy::*;
        assert_eq!(decide(Paired, &a, Some("paired"), "n", None), Trusted);
        assert!(matches!(
            decide(Paired, &a, None, "n", None),
            Untrusted { .. }
        ));
        assert!(matches!(
            decide(Paired, &a, Some("tofu"), "n", None),
            Untrusted { .. }
        ));
        assert!(matches!(
            decide(Paired, &a, Some("untrusted"), "n", None),
            Untrusted { .. }
        ));
        assert_eq!(decide(Tofu, &a, None, "n", None), Trusted);
        assert_eq!(decide(Tofu, &a, Some("tofu"), "n", Some(&a)), Trusted);
        assert!(matches!(
            decide(Tofu, &b, None, "n", Some(&a)),
            KeyChanged { .. }
        ));
        assert!(matches!(
            decide(Tofu, &a, Some("untrusted"), "n", None),
            Untrusted { .. }
        ));
        assert_eq!(decide(Tofu, &a, Some("paired"), "n", Some(&b)), Trusted);
        assert!(matches!(
            decide(Tofu, &a, Some("someday"), "n", None),
            Untrusted { .. }
        ));
        match decide(Tofu, &b, Some("tofu"), "laptop", Some(&a)) {
            KeyChanged {
                name,
                known,
                presented,
            } => {
                assert_eq!((name.as_str(), &known, &presented), ("laptop", &a, &b))
            }
            other => panic!("expected KeyChanged, got {other:?}"),
        }
        assert_eq!(decide(Any, &a, Some("untrusted"), "n", None), Trusted);
        assert_eq!(decide(Any, &a, None, "n", None), Trusted);
        assert_eq!(decide(Any, &b, None, "n", Some(&a)), Trusted);
    }

    #[test]
    fn the_hint_says_how_to_pair() {
        let a = NodeId::from_public(&[1; 32]);
        let Decision::Untrusted { hint } = decide(TrustPolicy::Paired, &a, None, "n", None) else {
            panic!()
        };
        assert!(
            hint.contains("run `gateway pair` on the receiver"),
            "{hint}"
        );
        assert!(hint.contains("--trust tofu"), "{hint}");
        assert!(hint.contains(a.as_str()));
    }

    #[test]
    fn policies_parse_and_print_and_default_to_paired() {
        for p in [TrustPolicy::Paired, TrustPolicy::Tofu, TrustPolicy::Any] {
            assert_eq!(p.to_string().parse::<TrustPolicy>().unwrap(), p);
        }
        assert_eq!(" TOFU ".parse::<TrustPolicy>().unwrap(), TrustPolicy::Tofu);
        assert_eq!(TrustPolicy::default(), TrustPolicy::Paired);
        // clap's FromStr parser (the CLI's --trust) needs this bound.
        fn clap_can_parse<T: std::str::FromStr>()
        where
            T::Err: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
        {
        }
        clap_can_parse::<TrustPolicy>();
        let e = "trusty".parse::<TrustPolicy>().unwrap_err();
        assert!(e.to_string().contains("paired, tofu or any"), "{e}");
    }
}
