//! The configuration file, environment and flags merged into one
//! [`NodeConfig`] (plus serve's defaults), remembering where every value came
//! from for `gateway config show`.
//!
//! Precedence, lowest first: built-in default, the TOML file (`--config`,
//! env `GATEWAY_CONFIG`, default `$XDG_CONFIG_HOME/gateway/config.toml`), the
//! environment (`GATEWAY_<SECTION>_<KEY>`, e.g.
//! `GATEWAY_ENGINE_CHUNK_SIZE_BYTES`; the trust policy is `GATEWAY_TRUST`),
//! then flags. Every key has its unit in its name. An unknown key or a value
//! of the wrong type is an error naming the key, so a typo never passes
//! silently.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use gateway_node::NodeConfig;
use gateway_node::dirtree::Conflict;

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    Default,
    File(PathBuf),
    Env(String),
    Flag,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Default => write!(f, "default"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Env(v) => write!(f, "env {v}"),
            Source::Flag => write!(f, "flag"),
        }
    }
}

/// Everything a config may set.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) node: NodeConfig,
    /// `serve --dir` when the flag is not given.
    pub(crate) serve_dir: Option<PathBuf>,
    /// `serve --listen` when no flag is given.
    pub(crate) serve_listen: Vec<String>,
    /// Advertise over mDNS (`serve --no-mdns` turns it off).
    pub(crate) serve_mdns: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            node: NodeConfig::default(),
            serve_dir: None,
            serve_listen: vec!["tcp:0.0.0.0:7878".into()],
            serve_mdns: true,
        }
    }
}

type Get = fn(&Settings) -> toml::Value;
type Set = fn(&mut Settings, &toml::Value) -> Result<(), String>;

/// One key: its name (`section.key`), what it is, and how to read and write it.
struct Key {
    name: &'static str,
    help: &'static str,
    get: Get,
    set: Set,
}

fn int(v: &toml::Value) -> Result<u64, String> {
    match v {
        toml::Value::Integer(i) if *i >= 0 => Ok(*i as u64),
        toml::Value::String(s) => s
            .trim()
            .replace('_', "")
            .parse::<u64>()
            .map_err(|_| format!("{s:?} is not a non-negative whole number")),
        other => Err(format!("expected a non-negative whole number, got {other}")),
    }
}

fn text(v: &toml::Value) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        other => Err(format!("expected a string, got {other}")),
    }
}

fn boolean(v: &toml::Value) -> Result<bool, String> {
    match v {
        toml::Value::Boolean(b) => Ok(*b),
        toml::Value::String(s) => match s.as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(format!("{s:?} is not true or false")),
        },
        other => Err(format!("expected true or false, got {other}")),
    }
}

fn list(v: &toml::Value) -> Result<Vec<String>, String> {
    match v {
        toml::Value::Array(a) => a.iter().map(text).collect(),
        // From the environment: comma-separated.
        toml::Value::String(s) => Ok(s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()),
        other => Err(format!("expected a list of strings, got {other}")),
    }
}

fn ms(d: Duration) -> toml::Value {
    toml::Value::Integer(d.as_millis() as i64)
}

fn n(x: impl Into<u64>) -> toml::Value {
    toml::Value::Integer(x.into() as i64)
}

fn positive(x: u64) -> Result<u64, String> {
    if x == 0 {
        return Err("must be at least 1".into());
    }
    Ok(x)
}

fn small(x: u64) -> Result<u32, String> {
    u32::try_from(x).map_err(|_| format!("{x} is too large"))
}

/// Declares a key whose value is a number of bytes / a count (`u64` or
/// `u32` field) or a duration in milliseconds.
macro_rules! key {
    ($name:literal, $help:literal, u64 $($f:ident).+) => {
        Key { name: $name, help: $help,
              get: |s| n(s.$($f).+),
              set: |s, v| { s.$($f).+ = positive(int(v)?)?; Ok(()) } }
    };
    ($name:literal, $help:literal, u32 $($f:ident).+) => {
        Key { name: $name, help: $help,
              get: |s| n(s.$($f).+),
              set: |s, v| { s.$($f).+ = small(positive(int(v)?)?)?; Ok(()) } }
    };
    ($name:literal, $help:literal, usize $($f:ident).+) => {
        Key { name: $name, help: $help,
              get: |s| n(s.$($f).+ as u64),
              set: |s, v| { s.$($f).+ = positive(int(v)?)? as usize; Ok(()) } }
    };
    ($name:literal, $help:literal, ms $($f:ident).+) => {
        Key { name: $name, help: $help,
              get: |s| ms(s.$($f).+),
              set: |s, v| { s.$($f).+ = Duration::from_millis(positive(int(v)?)?); Ok(()) } }
    };
}

fn keys() -> Vec<Key> {
    vec![
        key!("engine.chunk_size_bytes", "size of one chunk (a power of two, >= 1024)", u32 node.engine.chunk_size_bytes),
        key!("engine.link_window_bytes", "a link's window before its rate and round trip are measured", u64 node.engine.link_window_bytes),
        key!("engine.link_window_min_chunks", "smallest window of a link, in chunks", u32 node.engine.link_window_min_chunks),
        key!("engine.link_window_max_bytes", "largest window of a link", u64 node.engine.link_window_max_bytes),
        key!("engine.window_gain_percent", "window as a percentage of bandwidth x minimum round trip", u32 node.engine.window_gain_percent),
        key!("engine.chunk_timeout_ms", "an unacked chunk is given to another link after this", ms node.engine.chunk_timeout),
        key!("engine.link_silence_timeout_ms", "a link with chunks in flight silent this long is declared down", ms node.engine.link_silence_timeout),
        key!("engine.retry_interval_ms", "how often a failed link is tried again", ms node.engine.retry_interval),
        key!("engine.checkpoint_bytes", "the receiver makes data durable after this many new bytes", u64 node.engine.checkpoint_bytes),
        key!("engine.checkpoint_interval_ms", "... or after this long, whichever comes first", ms node.engine.checkpoint_interval),
        key!("engine.max_copies_per_chunk", "most copies of one chunk in flight (tail duplication)", usize node.engine.max_copies_per_chunk),
        key!("engine.tail_duplicate_after_ms", "an idle link duplicates only chunks in flight this long", ms node.engine.tail_duplicate_after),
        key!("engine.max_verify_rounds", "rounds of re-sending bad chunks after a failed whole-file hash", u32 node.engine.max_verify_rounds),
        key!("node.hello_timeout_ms", "how long a peer has to send its Hello", ms node.hello_timeout),
        key!("node.handshake_timeout_ms", "how long the Noise handshake may take", ms node.handshake_timeout),
        key!("node.accept_timeout_ms", "how long the receiver has to answer an Offer", ms node.accept_timeout),
        key!("node.pause_after_ms", "with no link up this long, the sender saves and exits (paused)", ms node.pause_after),
        key!("node.verdict_timeout_ms", "how long the sender waits for the receiver's verdict", ms node.verdict_timeout),
        key!("node.tick_ms", "how often the engines' timers run", ms node.tick),
        key!("node.reserve_free_bytes", "bytes kept free on the receiver's disk beyond a transfer", u64 node.reserve_free_bytes),
        key!("node.discovery_window_ms", "how long send --to NAME browses mDNS at most", ms node.discovery_window),
        key!("node.discovery_settle_ms", "once the peer answered, how long to wait for its other paths", ms node.discovery_settle),
        key!("node.rediscover_interval_ms", "while a named receiver's link is down, look for it again this often", ms node.rediscover_interval),
        key!("node.grow_interval_ms", "with every link to a named receiver up, still look for new paths to it this often (0: never)", ms node.grow_interval),
        key!("node.max_paused_frames_per_transfer", "ERROR/USER_STOP frames a sender keeps in its DB per transfer (the newest)", usize node.max_paused_frames_per_transfer),
        Key {
            name: "node.trust",
            help: "who may exchange files: paired, tofu or any",
            get: |s| toml::Value::String(s.node.trust.to_string()),
            set: |s, v| {
                s.node.trust = text(v)?
                    .parse()
                    .map_err(|e: gateway_secure::SecureError| e.to_string())?;
                Ok(())
            },
        },
        Key {
            name: "serve.dir",
            help: "where received files land (serve --dir)",
            get: |s| {
                toml::Value::String(
                    s.serve_dir
                        .as_ref()
                        .map_or(String::new(), |p| p.display().to_string()),
                )
            },
            set: |s, v| {
                let t = text(v)?;
                s.serve_dir = (!t.is_empty()).then(|| expand_home(&t));
                Ok(())
            },
        },
        Key {
            name: "serve.listen",
            help: "where serve listens (serve --listen)",
            get: |s| {
                toml::Value::Array(
                    s.serve_listen
                        .iter()
                        .cloned()
                        .map(toml::Value::String)
                        .collect(),
                )
            },
            set: |s, v| {
                let l = list(v)?;
                if l.is_empty() {
                    return Err("give at least one selector".into());
                }
                s.serve_listen = l;
                Ok(())
            },
        },
        Key {
            name: "serve.mdns",
            help: "advertise this node over mDNS",
            get: |s| toml::Value::Boolean(s.serve_mdns),
            set: |s, v| {
                s.serve_mdns = boolean(v)?;
                Ok(())
            },
        },
        Key {
            name: "serve.on_conflict",
            help: "when a landing name is taken: rename, overwrite or skip",
            get: |s| toml::Value::String(s.node.on_conflict.to_string()),
            set: |s, v| {
                s.node.on_conflict = text(v)?.parse::<Conflict>()?;
                Ok(())
            },
        },
        key!("serve.max_links", "links one serve takes at once (more are closed at once)", usize node.caps.max_links),
        key!("serve.max_handshaking_links", "links still in their handshake or before Hello at once (bounds a flood of silent connections)", usize node.caps.max_handshaking_links),
        key!("serve.max_links_per_peer", "links from one peer key at once", usize node.caps.max_links_per_peer),
        key!("serve.max_open_transfers", "transfers being fed at once (more senders are told Busy and wait)", usize node.caps.max_open_transfers),
        key!("serve.max_open_transfers_per_peer", "transfers being fed at once per peer key", usize node.caps.max_open_transfers_per_peer),
        key!("serve.link_idle_timeout_ms", "a link that delivers no whole frame, or takes no reply, this long is dropped", ms node.caps.link_idle_timeout),
        key!("limits.max_frame_bytes", "largest frame accepted from a peer", usize node.limits.max_frame_bytes),
    ]
}

fn expand_home(p: &str) -> PathBuf {
    match p.strip_prefix("~/") {
        Some(rest) => dirs::home_dir().unwrap_or_default().join(rest),
        None => PathBuf::from(p),
    }
}

fn env_name(key: &str) -> String {
    if key == "node.trust" {
        return "GATEWAY_TRUST".into();
    }
    format!("GATEWAY_{}", key.replace('.', "_").to_uppercase())
}

/// The default config file: `$XDG_CONFIG_HOME/gateway/config.toml`.
pub(crate) fn default_path() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("gateway").join("config.toml"))
}

/// The merged settings and where each came from.
pub(crate) struct Loaded {
    pub(crate) settings: Settings,
    pub(crate) sources: BTreeMap<&'static str, Source>,
    /// The file read, and whether it existed.
    pub(crate) file: Option<(PathBuf, bool)>,
}

impl Loaded {
    /// Reads the file (`explicit`, else the default path if it exists) and
    /// the environment `env`.
    pub(crate) fn load(
        explicit: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Loaded> {
        let mut settings = Settings::default();
        let keys = keys();
        let mut sources: BTreeMap<&'static str, Source> =
            keys.iter().map(|k| (k.name, Source::Default)).collect();
        let path = explicit.map(Path::to_path_buf).or_else(default_path);
        let mut file = None;
        if let Some(path) = path {
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    apply_file(&keys, &mut settings, &mut sources, &path, &text)?;
                    file = Some((path, true));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => {
                    file = Some((path, false));
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot read config {}", path.display()));
                }
            }
        }
        for k in &keys {
            let var = env_name(k.name);
            if let Some(raw) = env(&var) {
                (k.set)(&mut settings, &toml::Value::String(raw.clone()))
                    .map_err(|e| anyhow::anyhow!("{var}={raw:?}: {e}"))?;
                sources.insert(k.name, Source::Env(var));
            }
        }
        Ok(Loaded {
            settings,
            sources,
            file,
        })
    }

    /// A flag set `key`.
    pub(crate) fn flag(&mut self, key: &'static str) {
        self.sources.insert(key, Source::Flag);
    }

    /// `config show`: valid TOML, every key with its value and, as a
    /// comment, what it is and where the value came from.
    pub(crate) fn show(&self) -> String {
        let mut out = String::new();
        match &self.file {
            Some((p, true)) => out.push_str(&format!("# config file: {} (read)\n", p.display())),
            Some((p, false)) => out.push_str(&format!(
                "# config file: {} (not present; defaults)\n",
                p.display()
            )),
            None => out.push_str("# config file: none\n"),
        }
        let mut section = "";
        for k in keys() {
            let (sec, name) = k.name.split_once('.').expect("section.key");
            if sec != section {
                out.push_str(&format!("\n[{sec}]\n"));
                section = sec;
            }
            let v = (k.get)(&self.settings);
            out.push_str(&format!(
                "{name} = {v}  # {} — {}\n",
                self.sources[k.name], k.help
            ));
        }
        out
    }

    /// `config show --json`: `{key: {value, source}}`.
    pub(crate) fn json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for k in keys() {
            let v = (k.get)(&self.settings);
            let value = serde_json::to_value(&v).unwrap_or(serde_json::Value::Null);
            m.insert(
                k.name.to_string(),
                serde_json::json!({"value": value, "source": self.sources[k.name].to_string()}),
            );
        }
        serde_json::Value::Object(m)
    }
}

fn apply_file(
    keys: &[Key],
    settings: &mut Settings,
    sources: &mut BTreeMap<&'static str, Source>,
    path: &Path,
    text: &str,
) -> Result<()> {
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("config {} is not valid TOML", path.display()))?;
    for (sec, body) in &table {
        let Some(body) = body.as_table() else {
            bail!(
                "config {}: `{sec}` should be a section ([{sec}]); `gateway config show` lists the settings",
                path.display()
            );
        };
        for (name, value) in body {
            let full = format!("{sec}.{name}");
            let Some(k) = keys.iter().find(|k| k.name == full) else {
                bail!(
                    "config {}: unknown setting `{full}`; `gateway config show` lists them",
                    path.display()
                );
            };
            (k.set)(settings, value)
                .map_err(|e| anyhow::anyhow!("config {}: `{full}`: {e}", path.display()))?;
            sources.insert(k.name, Source::File(path.to_path_buf()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn load_text(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Loaded> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        std::fs::write(&p, text).unwrap();
        Loaded::load(Some(&p), env)
    }

    #[test]
    fn file_then_env_override_defaults_and_each_value_knows_its_source() {
        let env = |v: &str| (v == "GATEWAY_ENGINE_RETRY_INTERVAL_MS").then(|| "750".to_string());
        let l = load_text(
            "[engine]\nchunk_size_bytes = 262144\nretry_interval_ms = 5000\n[serve]\nlisten = [\"tcp:0.0.0.0:9000\", \"serial:/dev/ttyGS0\"]\non_conflict = \"skip\"\n",
            &env,
        )
        .unwrap();
        assert_eq!(l.settings.node.engine.chunk_size_bytes, 262_144);
        assert_eq!(
            l.settings.node.engine.retry_interval,
            Duration::from_millis(750)
        );
        assert_eq!(l.settings.serve_listen.len(), 2);
        assert_eq!(l.settings.node.on_conflict, Conflict::Skip);
        assert!(matches!(
            l.sources["engine.chunk_size_bytes"],
            Source::File(_)
        ));
        assert_eq!(
            l.sources["engine.retry_interval_ms"],
            Source::Env("GATEWAY_ENGINE_RETRY_INTERVAL_MS".into())
        );
        assert_eq!(l.sources["node.pause_after_ms"], Source::Default);
        let shown = l.show();
        assert!(shown.contains("retry_interval_ms = 750  # env GATEWAY_ENGINE_RETRY_INTERVAL_MS"));
        // What `config show` prints is itself a valid config.
        let again = load_text(&shown.replace("  #", "\n#"), &no_env).unwrap();
        assert_eq!(again.settings.node.engine.chunk_size_bytes, 262_144);
    }

    #[test]
    fn typos_wrong_types_and_bad_values_are_errors_naming_the_key() {
        for (text, want) in [
            (
                "[engine]\nchunk_size = 1\n",
                "unknown setting `engine.chunk_size`",
            ),
            (
                "[engine]\nchunk_size_bytes = \"big\"\n",
                "engine.chunk_size_bytes",
            ),
            ("[engine]\nretry_interval_ms = 0\n", "at least 1"),
            ("[node]\ntrust = \"everyone\"\n", "node.trust"),
            (
                "[serve]\non_conflict = \"merge\"\n",
                "rename, overwrite or skip",
            ),
            ("engine = 3\n", "should be a section"),
            ("[engine\n", "not valid TOML"),
        ] {
            let err = format!("{:#}", load_text(text, &no_env).err().expect(text));
            assert!(err.contains(want), "{text:?}: {err}");
        }
        let env = |v: &str| (v == "GATEWAY_TRUST").then(|| "nobody".to_string());
        let err = format!("{:#}", Loaded::load(None, &env).err().unwrap());
        assert!(err.contains("GATEWAY_TRUST"), "{err}");
    }

    #[test]
    fn a_missing_default_file_is_fine_and_a_missing_explicit_one_is_not() {
        let l = Loaded::load(None, &no_env).unwrap();
        assert_eq!(l.settings.node.engine, NodeConfig::default().engine);
        let err = Loaded::load(Some(Path::new("/nonexistent/gateway.toml")), &no_env);
        assert!(err.is_err());
    }
}
