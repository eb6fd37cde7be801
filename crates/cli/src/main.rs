//! `gateway`: move one file over every link two Linux boxes share, at once.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use gateway_node::send::{SendOptions, SendProgress, SendReport};
use gateway_node::serve::{ServeEvent, ServeOptions};
use gateway_node::{NodeConfig, NodeError, NodeState};
use tokio::sync::watch;

mod config;
mod control;
mod demo;
mod docs;
mod peers;
mod progress;

/// Exit code: transfer paused (links gone, disk full); state is saved, rerun to resume.
pub const EXIT_PAUSED: u8 = 75;
/// Exit code: stopped by the user (Ctrl-C, SIGTERM); state is saved, rerun to resume.
pub const EXIT_STOPPED: u8 = 130;
/// Exit code: anything else that went wrong; the message says what to do.
pub const EXIT_ERROR: u8 = 1;
/// Exit code: the command line was wrong (clap's own code for usage errors).
pub const EXIT_USAGE: u8 = 2;

/// Every exit code, for `--help`, the man page (EXIT STATUS) and README's
/// "Exit codes", which must say the same.
pub(crate) const EXIT_CODES: &[(u8, &str)] = &[
    (
        0,
        "Done: the file or directory arrived with its hash verified, or the command did what it says.",
    ),
    (EXIT_ERROR, "Error; the message says what to do."),
    (
        EXIT_USAGE,
        "Bad command line: unknown option or command, missing or invalid value.",
    ),
    (
        EXIT_PAUSED,
        "Paused: no link for too long, or the receiver's disk is full. State saved; run the same command again to resume.",
    ),
    (
        EXIT_STOPPED,
        "Stopped by the user (Ctrl-C, SIGTERM); also how serve ends. State saved; run the same command again to resume.",
    ),
];

/// Every environment variable gateway reads, for `--help` and the man page.
pub(crate) const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "GATEWAY_STATE",
        "State directory, as --state (default $XDG_STATE_HOME/gateway).",
    ),
    (
        "GATEWAY_NAME",
        "The name this node tells peers, as --name (default the host name).",
    ),
    (
        "GATEWAY_TYPE",
        "What kind of machine this is, as --type (default a guess from DMI or the device tree).",
    ),
    (
        "GATEWAY_TRUST",
        "Trust policy, as --trust: paired, tofu or any.",
    ),
    (
        "GATEWAY_CONFIG",
        "Configuration file, as --config (default $XDG_CONFIG_HOME/gateway/config.toml).",
    ),
    (
        "GATEWAY_<SECTION>_<KEY>",
        "Any setting of the config file, e.g. GATEWAY_ENGINE_CHUNK_SIZE_BYTES=262144 (`gateway config show` lists them).",
    ),
    (
        "RUST_LOG",
        "Log filter, overriding -v and -q, e.g. gateway_node=debug.",
    ),
    (
        "XDG_STATE_HOME",
        "Where the default state directory lives (default ~/.local/state).",
    ),
    (
        "XDG_CONFIG_HOME",
        "Where the default config file lives (default ~/.config).",
    ),
];

/// The clap definition with exit codes and environment in `--help`;
/// parsing, completions and the man page all use this one.
pub(crate) fn cli_command() -> clap::Command {
    let mut after = String::from("Exit status:\n");
    for (code, meaning) in EXIT_CODES {
        after.push_str(&format!("  {code:<5}{meaning}\n"));
    }
    after.push_str("\nEnvironment:\n");
    for (var, meaning) in ENVIRONMENT {
        after.push_str(&format!("  {var:<16}{meaning}\n"));
    }
    Cli::command().after_long_help(after)
}

#[derive(Parser, Debug)]
#[command(name = "gateway", version, about = "Move one file over every link two Linux boxes share — TCP, USB, Bluetooth — at once.", long_about = None)]
struct Cli {
    /// State directory (DB, node identity). Default: $XDG_STATE_HOME/gateway.
    #[arg(long, global = true, env = "GATEWAY_STATE", value_name = "DIR")]
    state: Option<PathBuf>,
    /// More logs (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors on stderr: no progress bars, no notes (results on stdout stay).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Who may exchange files with this node: paired (default), tofu (first key seen per name is pinned), any (labs). Env GATEWAY_TRUST.
    #[arg(long, global = true, value_name = "POLICY")]
    trust: Option<gateway_secure::TrustPolicy>,
    /// Configuration file (TOML; `gateway config show` prints every setting).
    /// Default: $XDG_CONFIG_HOME/gateway/config.toml, if present.
    #[arg(long, global = true, env = "GATEWAY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The name this node tells peers (Hello, mDNS). Default: the host name.
    #[arg(long, global = true, env = "GATEWAY_NAME", value_name = "NAME")]
    name: Option<String>,
    /// What kind of machine this is (laptop, desktop, server, board, phone). Default: a guess.
    #[arg(
        long = "type",
        global = true,
        env = "GATEWAY_TYPE",
        value_name = "TYPE"
    )]
    node_type: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

/// What every command needs: where the state is, who this node says it is.
pub(crate) struct Ctx {
    pub(crate) state_dir: PathBuf,
    name: Option<String>,
    node_type: Option<String>,
    pub(crate) cfg: NodeConfig,
    pub(crate) quiet: bool,
}

impl Ctx {
    /// Opens the state directory with this node's name and type applied.
    pub(crate) fn open(&self) -> Result<NodeState> {
        let mut st = open_state(&self.state_dir)?;
        st.set_identity(self.name.as_deref(), self.node_type.as_deref())?;
        Ok(st)
    }
}

#[derive(Subcommand, Debug)]
enum PeersCmd {
    /// Record static addresses for a peer NAME, tried first and whenever mDNS finds nothing
    /// (AP isolation, VLANs, VPNs, multicast filtered).
    Add {
        /// The peer's name (as it calls itself).
        // Its own id: under "name" it would shadow the global --name here.
        #[arg(id = "peer", value_name = "NAME")]
        name: String,
        /// Its links, e.g. tcp:10.8.0.2:7878.
        #[arg(required = true, value_name = "SEL")]
        selectors: Vec<String>,
    },
    /// Forget static addresses of NAME (all of them, or the ones given).
    Remove {
        /// The peer's name.
        #[arg(id = "peer", value_name = "NAME")]
        name: String,
        /// Only these.
        #[arg(value_name = "SEL")]
        selectors: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum TransfersCmd {
    /// Run a saved send again (to the same receiver, found by its id).
    Resume {
        /// The transfer id, or at least 4 hex digits of it (`gateway transfers`).
        id: String,
        /// Print one JSON object with the result as the last stdout line.
        #[arg(long)]
        json: bool,
    },
    /// Forget a transfer on this node (the receiving side also deletes what
    /// arrived so far). Run it on the other node too.
    Cancel {
        /// The transfer id, or at least 4 hex digits of it.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Every setting with its value and where it came from (default, file,
    /// env, flag); the output is itself a valid config file.
    Show {
        /// JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum UsbGadgetCmd {
    /// Register the gateway USB gadget (unbound) for an unprivileged serve:
    /// FunctionFS mounted at DIR and owned by USER, the gadget's UDC
    /// attribute too. Then, as USER: `gateway serve --listen usb:gadget?ffs=DIR`.
    Setup {
        /// Who will serve it (default: the user running this, usually root).
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// Where FunctionFS is mounted.
        #[arg(long, value_name = "DIR", default_value = "/dev/usb-ffs/gateway")]
        dir: PathBuf,
        /// Also a CDC-ACM function, for the serial driver
        /// (/dev/ttyGS0 here, /dev/ttyACM0 on the host).
        #[arg(long)]
        acm: bool,
    },
    /// Unbind and remove the gateway USB gadget, and unmount its FunctionFS.
    Teardown,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Receive files into DIR on every --listen selector.
    Serve {
        /// Where received files land (default: serve.dir in the config file).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Where to listen, e.g. tcp:0.0.0.0:7878 (repeat for several links;
        /// default: serve.listen in the config file, else tcp:0.0.0.0:7878).
        #[arg(long, value_name = "SEL")]
        listen: Vec<String>,
        /// Do not advertise this node over mDNS (_gateway._tcp).
        #[arg(long)]
        no_mdns: bool,
        /// When a name that lands is taken: rename (keep both: "name (1).ext"),
        /// overwrite (replace it atomically) or skip (keep what is there).
        /// A file already there with the same content is always kept as is.
        #[arg(long, value_name = "POLICY")]
        on_conflict: Option<gateway_node::dirtree::Conflict>,
    },
    /// Send PATH to a peer (by name or id: every path to it) or over every --to link at once.
    Send {
        /// The file or directory to send (a directory goes as one transfer:
        /// files, subdirectories, symlinks inside it, modes and times).
        path: PathBuf,
        /// The receiver: a peer's NAME or node id (found by mDNS, static
        /// addresses and the peerstore; every path to it is used), or a link
        /// such as tcp:192.168.1.7:7878 (repeat for more links).
        #[arg(long, value_name = "NAME|ID|SEL", required = true)]
        to: Vec<String>,
        /// Print one JSON object with the result as the last stdout line.
        #[arg(long)]
        json: bool,
        /// Do not browse mDNS for a named peer (static and known addresses only).
        #[arg(long)]
        no_mdns: bool,
    },
    /// Pair with another node using a short code (run without CODE on one node, with it on the other).
    Pair {
        /// The code printed by `gateway pair` on the other node.
        code: Option<String>,
        /// Where to wait for the other node (without CODE).
        #[arg(long, value_name = "SEL", default_value = "tcp:0.0.0.0:7879")]
        listen: String,
        /// The other node's pairing listener (with CODE), e.g. tcp:192.168.1.7:7879.
        #[arg(long, value_name = "SEL")]
        to: Option<String>,
    },
    /// This node's id (the fingerprint of its key).
    Id {
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Peers this node knows, and which are live now (browses mDNS first).
    #[command(args_conflicts_with_subcommands = true)]
    Peers {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Browse mDNS this many seconds first and verify what answers (0: only list).
        #[arg(long, value_name = "SECS", default_value_t = 2.0)]
        browse: f64,
        #[command(subcommand)]
        action: Option<PeersCmd>,
    },
    /// Trust a peer by id (or unique id prefix, or name) — as pairing would.
    Trust {
        /// Node id (`gateway id` on that node), a unique prefix, or a known name.
        id: String,
    },
    /// Stop trusting a peer: its Offers are refused until it is paired again.
    Untrust {
        /// Node id, a unique prefix, or a known name.
        id: String,
    },
    /// Every transport this build knows, whether it is usable here, and why not.
    Links {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Prepare or remove the USB gadget (root) so an unprivileged `gateway
    /// serve` can be the device end of a USB cable.
    #[command(name = "usb-gadget")]
    UsbGadget {
        #[command(subcommand)]
        action: UsbGadgetCmd,
    },
    /// Unfinished transfers with their progress.
    #[command(args_conflicts_with_subcommands = true)]
    Transfers {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: Option<TransfersCmd>,
    },
    /// USER_STOP to the running `send`/`serve` processes of this state
    /// directory: they save their state and exit (a rerun resumes).
    Stop {
        /// Only these: `send`, `serve`, or a process id (default: all).
        what: Option<String>,
    },
    /// The merged configuration: defaults, config file, environment, flags.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Two nodes in one process, two real loopback TCP links, one generated file.
    Demo {
        /// Size of the generated file (e.g. 256MiB, 1GiB).
        #[arg(long, default_value = "256MiB")]
        size: String,
        /// Number of TCP links.
        #[arg(long, default_value_t = 2)]
        links: usize,
        /// Per-link rate caps, comma separated (e.g. 100MB,50MB); "none" for full speed.
        #[arg(long, default_value = "120MB,60MB")]
        rates: String,
        /// Keep the demo directory instead of deleting it.
        #[arg(long)]
        keep: bool,
        /// Print the send result as JSON on the last stdout line.
        #[arg(long)]
        json: bool,
    },
    /// Print the shell completion script for SHELL to stdout.
    #[command(
        after_help = "Install, e.g.:\n  gateway completions bash > ~/.local/share/bash-completion/completions/gateway\n  gateway completions zsh > ~/.zfunc/_gateway   # with fpath+=(~/.zfunc) before compinit\n  gateway completions fish > ~/.config/fish/completions/gateway.fish"
    )]
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) for gateway and every command to stdout.
    #[command(
        after_help = "Install, e.g.:\n  gateway man > ~/.local/share/man/man1/gateway.1\n  gateway man --dir /usr/share/man/man1   # also gateway-send.1, gateway-serve.1, …"
    )]
    Man {
        /// Instead, write gateway.1 and one page per command (gateway-send.1,
        /// gateway-peers-add.1, …) into DIR and print their paths.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// Keep 1 MiB frame buffers on the heap and the heap untrimmed: by default
/// glibc serves each frame-sized allocation from a fresh mmap (or trims the
/// heap after it), so every frame paid for page faults and zeroing — a
/// third of the receiver's system time. Measured in bench/loopback.sh.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator thresholds; called once at
    // start-up before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

/// Whether a panic is `println!` finding stdout's reader gone.
fn is_broken_pipe(payload: &(dyn std::any::Any + Send)) -> bool {
    let text = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("");
    text.contains("failed printing to stdout") && text.contains("Broken pipe")
}

/// A closed stdout is not a crash: no panic message for it (main exits 0).
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !is_broken_pipe(info.payload()) {
            default(info);
        }
    }));
}

/// How long leftover tasks may run after a command finished.
const SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::from_arg_matches(&cli_command().get_matches()).unwrap_or_else(|e| e.exit());
    init_tracing(cli.verbose, cli.quiet);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    quiet_broken_pipe();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(run(cli))));
    // The command has finished and said so. Whatever it left behind (a
    // blocking task, a socket whose close waits on a peer) gets a moment,
    // then the process exits: dropping the runtime would wait for it without
    // bound (the Bluetooth rig saw a sender print its verdict, then hang).
    rt.shutdown_timeout(SHUTDOWN_WAIT);
    let outcome = match outcome {
        Ok(o) => o,
        // `gateway transfers | head -1`: the reader got what it wanted.
        Err(p) if is_broken_pipe(&*p) => return ExitCode::SUCCESS,
        Err(p) => std::panic::resume_unwind(p),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            let code = match e.downcast_ref::<NodeError>() {
                Some(NodeError::Paused(_)) => EXIT_PAUSED,
                Some(NodeError::Stopped) => EXIT_STOPPED,
                _ => EXIT_ERROR,
            };
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}

fn init_tracing(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn state_dir(cli_state: &Option<PathBuf>) -> PathBuf {
    cli_state
        .clone()
        .unwrap_or_else(gateway_node::state::default_state_dir)
}

/// A watch that turns true on Ctrl-C or SIGTERM (USER_STOP).
///
/// Both handlers are installed before this returns, so a signal that comes
/// right after the caller announced itself is a USER_STOP, not a plain kill.
fn stop_signal() -> watch::Receiver<bool> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = watch::channel(false);
    let int = signal(SignalKind::interrupt());
    let term = signal(SignalKind::terminate());
    tokio::spawn(async move {
        let (Ok(mut int), Ok(mut term)) = (int, term) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        let _ = tx.send(true);
    });
    rx
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let mut loaded = config::Loaded::load(cli.config.as_deref(), &|v| std::env::var(v).ok())?;
    if let Some(t) = cli.trust {
        loaded.settings.node.trust = t;
        loaded.flag("node.trust");
    }
    if let Cmd::Serve {
        dir,
        listen,
        no_mdns,
        on_conflict,
    } = &cli.cmd
    {
        if let Some(d) = dir {
            loaded.settings.serve_dir = Some(d.clone());
            loaded.flag("serve.dir");
        }
        if !listen.is_empty() {
            loaded.settings.serve_listen = listen.clone();
            loaded.flag("serve.listen");
        }
        if *no_mdns {
            loaded.settings.serve_mdns = false;
            loaded.flag("serve.mdns");
        }
        if let Some(c) = on_conflict {
            loaded.settings.node.on_conflict = *c;
            loaded.flag("serve.on_conflict");
        }
    }
    let settings = loaded.settings.clone();
    let ctx = Ctx {
        state_dir: state_dir(&cli.state),
        name: cli.name,
        node_type: cli.node_type,
        cfg: settings.node.clone(),
        quiet: cli.quiet,
    };
    match cli.cmd {
        Cmd::Serve { .. } => {
            let Some(dir) = settings.serve_dir.clone() else {
                bail!(
                    "where should files land? give --dir DIR, or set `dir` under [serve] in the config file ({})",
                    config::default_path()
                        .map_or("--config FILE".into(), |p| p.display().to_string())
                );
            };
            serve(
                &ctx,
                dir,
                settings.serve_listen.clone(),
                settings.serve_mdns,
            )
            .await
        }
        Cmd::Config {
            cmd: ConfigCmd::Show { json },
        } => {
            if json {
                println!("{}", loaded.json());
            } else {
                print!("{}", loaded.show());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Send {
            path,
            to,
            json,
            no_mdns,
        } => run_send(&ctx, path, to, json, !no_mdns).await,
        Cmd::Pair { code, listen, to } => peers::pair(&ctx, code, listen, to).await,
        Cmd::Id { json } => peers::id(&ctx, json),
        Cmd::Peers {
            json,
            browse,
            action,
        } => match action {
            None => peers::list(&ctx, json, browse).await,
            Some(PeersCmd::Add { name, selectors }) => peers::add(&ctx, &name, &selectors),
            Some(PeersCmd::Remove { name, selectors }) => peers::remove(&ctx, &name, &selectors),
        },
        Cmd::Trust { id } => peers::set(&ctx, &id, true),
        Cmd::Untrust { id } => peers::set(&ctx, &id, false),
        Cmd::Links { json } => links(json).await,
        Cmd::UsbGadget { action } => usb_gadget(action),
        Cmd::Transfers { json, action: None } => transfers(&ctx.state_dir, json),
        Cmd::Transfers {
            action: Some(TransfersCmd::Resume { id, json }),
            ..
        } => {
            let rec = gateway_node::transfers::find(&ctx.open()?, &id)?;
            if rec.direction != gateway_store::Direction::Send {
                bail!(
                    "this node receives {} ({}); the sender resumes it: run the same send there again, or `gateway transfers resume` on it",
                    rec.name,
                    &hex::encode(rec.id)[..8]
                );
            }
            // The receiver is found again by its node id (mDNS, static and known addresses).
            run_send(
                &ctx,
                PathBuf::from(&rec.path),
                vec![rec.peer.clone()],
                json,
                true,
            )
            .await
        }
        Cmd::Transfers {
            action: Some(TransfersCmd::Cancel { id }),
            ..
        } => {
            let state = ctx.open()?;
            let rec = gateway_node::transfers::find(&state, &id)?;
            let removed = gateway_node::transfers::cancel(&state, &rec)?;
            println!(
                "cancelled {} {} ({}){}",
                rec.direction,
                rec.name,
                &hex::encode(rec.id)[..8],
                if removed.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; deleted {}",
                        removed
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Stop { what } => stop(&ctx.state_dir, what.as_deref()),
        Cmd::Completions { shell } => docs::completions(shell, cli_command()),
        Cmd::Man { dir } => docs::man(cli_command(), dir.as_deref()),
        Cmd::Demo {
            size,
            links,
            rates,
            keep,
            json,
        } => {
            demo::run(demo::DemoOptions {
                size: parse_size(&size)?,
                links,
                rates,
                keep,
                json,
                quiet: ctx.quiet,
            })
            .await
        }
    }
}

fn open_state(dir: &std::path::Path) -> Result<NodeState> {
    NodeState::open(dir)
        .with_context(|| format!("cannot open the state directory {}", dir.display()))
}

/// `gateway send` (and `transfers resume`): find the receiver, send, report.
async fn run_send(
    ctx: &Ctx,
    path: PathBuf,
    to: Vec<String>,
    json: bool,
    mdns: bool,
) -> Result<ExitCode> {
    let state = ctx.open()?;
    let _running = control::register(&ctx.state_dir, "send", &path);
    let reg = Arc::new(gateway_node::registry::default_registry());
    let quiet = ctx.quiet || json;
    let (opts, found) =
        peers::send_targets(&state, &ctx.cfg, reg.clone(), path, to, mdns, quiet).await?;
    let mut report = send_with_progress(state, ctx.cfg.clone(), reg, opts, quiet, None).await?;
    report.discovery_ms = found.map(|d| d.as_millis() as u64);
    print_report(&report, json);
    Ok(ExitCode::SUCCESS)
}

/// `gateway stop [send|serve|PID]`.
fn stop(state_dir: &std::path::Path, what: Option<&str>) -> Result<ExitCode> {
    let all = control::list(state_dir);
    let targets: Vec<_> = match what {
        None => all,
        Some(c @ ("send" | "serve")) => all.into_iter().filter(|r| r.command == c).collect(),
        Some(pid) => {
            let pid: u32 = pid
                .parse()
                .with_context(|| format!("{pid:?}: give send, serve or a process id"))?;
            all.into_iter().filter(|r| r.pid == pid).collect()
        }
    };
    if targets.is_empty() {
        println!(
            "nothing to stop: no gateway {} runs on {}",
            what.unwrap_or("send or serve"),
            state_dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let (stopped, left) = control::stop(&targets, std::time::Duration::from_secs(15))?;
    for r in &stopped {
        println!(
            "stopped {} {} (pid {}); its state is saved",
            r.command, r.path, r.pid
        );
    }
    for r in &left {
        eprintln!(
            "gateway: {} {} (pid {}) is still saving after 15 s; it exits when done",
            r.command, r.path, r.pid
        );
    }
    Ok(if left.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn serve(ctx: &Ctx, dir: PathBuf, listen: Vec<String>, advertise: bool) -> Result<ExitCode> {
    let _running = control::register(&ctx.state_dir, "serve", &dir);
    let quiet = ctx.quiet;
    let mut stop = stop_signal();
    let state = ctx.open()?;
    let (name, id) = (state.name.clone(), state.node_id.clone());
    let reg = Arc::new(gateway_node::registry::default_registry());
    let mut handle = gateway_node::serve::start(
        state,
        ctx.cfg.clone(),
        reg,
        ServeOptions {
            dir: dir.clone(),
            listen,
            advertise,
        },
    )
    .await?;
    if !quiet {
        eprintln!("gateway: this node is {name} ({id})");
        for s in &handle.local_selectors {
            eprintln!("gateway: receiving into {} on {s}", dir.display());
        }
        match &handle.advertised {
            Ok(instance) => eprintln!("gateway: advertised over mDNS as {instance}"),
            Err(why) => eprintln!("gateway: not advertised over mDNS: {why}"),
        }
    }
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            ev = handle.events.recv() => match ev {
                Some(ServeEvent::Received { path, bytes }) if !quiet => {
                    eprintln!("gateway: received {} ({})", path.display(), human(bytes));
                }
                Some(ServeEvent::Started { name, size, .. }) if !quiet => {
                    eprintln!("gateway: receiving {name} ({})", human(size));
                }
                Some(ServeEvent::Refused { peer, why }) if !quiet => {
                    eprintln!("gateway: dropped a link from {peer}: {why}");
                }
                Some(_) => {}
                None => break,
            }
        }
    }
    if !quiet {
        eprintln!("gateway: stopping; saving state");
    }
    handle.shutdown().await?;
    Ok(ExitCode::from(EXIT_STOPPED))
}

/// Runs a send with progress bars; `stop` overrides Ctrl-C handling (demo).
pub(crate) async fn send_with_progress(
    state: NodeState,
    cfg: NodeConfig,
    reg: Arc<gateway_link::Registry>,
    opts: SendOptions,
    quiet: bool,
    stop: Option<watch::Receiver<bool>>,
) -> Result<SendReport> {
    let (ptx, prx) = watch::channel(SendProgress::default());
    let stop = stop.unwrap_or_else(stop_signal);
    let bars = if quiet {
        None
    } else {
        Some(tokio::spawn(progress::render(prx)))
    };
    let res = gateway_node::send::send(state, cfg, reg, opts, ptx, stop).await;
    if let Some(b) = bars {
        let _ = b.await;
    }
    Ok(res?)
}

fn print_report(r: &SendReport, json: bool) {
    if json {
        println!("{}", serde_json::to_string(r).unwrap_or_default());
        return;
    }
    println!(
        "verdict: {} — {} in {:.2} s ({:.1} MB/s), {} resumed, hash {}",
        r.verdict,
        human(r.bytes_total),
        r.elapsed_s,
        (r.bytes_total - r.bytes_resumed) as f64 / r.elapsed_s.max(1e-9) / 1e6,
        human(r.bytes_resumed),
        &r.hash[..16.min(r.hash.len())]
    );
    for l in &r.links {
        println!(
            "  {:<32} {:>10}  {:>7.1} MB/s  share {:>5.1}%{}",
            l.selector,
            human(l.bytes),
            l.mbps,
            l.share * 100.0,
            if l.resent > 0 {
                format!("  ({} re-sent)", human(l.resent))
            } else {
                String::new()
            }
        );
    }
}

fn usb_gadget(action: UsbGadgetCmd) -> Result<ExitCode> {
    match action {
        UsbGadgetCmd::Setup { user, dir, acm } => {
            let (uid, gid, who) = match user {
                None => (
                    nix::unistd::getuid().as_raw(),
                    nix::unistd::getgid().as_raw(),
                    "this user".to_string(),
                ),
                Some(name) => {
                    let u = nix::unistd::User::from_name(&name)
                        .with_context(|| format!("cannot look up user {name}"))?
                        .with_context(|| format!("no user named {name}"))?;
                    (u.uid.as_raw(), u.gid.as_raw(), name)
                }
            };
            let at = gateway_usb::setup_gadget(&dir, uid, gid, acm)?;
            println!(
                "gadget registered at {} (unbound), FunctionFS at {} for {who}{}\nnow, as {who}: gateway serve --listen 'usb:gadget?ffs={}'",
                at.display(),
                dir.display(),
                if acm { ", with a CDC-ACM function" } else { "" },
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        UsbGadgetCmd::Teardown => {
            if gateway_usb::teardown_gadget()? {
                println!("gateway gadget removed");
            } else {
                println!("no gateway gadget to remove");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn links(json: bool) -> Result<ExitCode> {
    let reg = gateway_node::registry::default_registry();
    let mut rows: Vec<serde_json::Value> = Vec::new();
    for d in reg.drivers() {
        let adapters = d.probe().await;
        if adapters.is_empty() {
            rows.push(
                serde_json::json!({"scheme": d.scheme(), "adapter": "-", "usable": false,
                "detail": format!("{} — no adapter found", d.describe())}),
            );
        }
        for a in adapters {
            rows.push(serde_json::json!({"scheme": a.scheme, "adapter": a.name, "usable": a.usable, "detail": a.detail}));
        }
    }
    for (scheme, why) in gateway_node::registry::NOT_BUILT {
        rows.push(
            serde_json::json!({"scheme": scheme, "adapter": "-", "usable": false, "detail": why}),
        );
    }
    if json {
        println!("{}", serde_json::Value::Array(rows));
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<8} {:<24} {:<7} DETAIL", "SCHEME", "ADAPTER", "USABLE");
    for r in rows {
        println!(
            "{:<8} {:<24} {:<7} {}",
            r["scheme"].as_str().unwrap_or(""),
            r["adapter"].as_str().unwrap_or(""),
            if r["usable"].as_bool().unwrap_or(false) {
                "yes"
            } else {
                "no"
            },
            r["detail"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn transfers(state_dir: &std::path::Path, json: bool) -> Result<ExitCode> {
    let state = open_state(state_dir)?;
    let list = state.store().list_transfers()?;
    let rows: Vec<serde_json::Value> = list
        .iter()
        .map(|t| {
            let geo = gateway_engine::Geometry::new(t.size, t.chunk_size);
            let durable = geo.bytes_of(&t.durable);
            serde_json::json!({
                "id": hex::encode(t.id),
                "direction": t.direction.to_string(),
                "name": t.name,
                "path": t.path,
                "peer": t.peer,
                "size": t.size,
                "durable_bytes": durable,
                "percent": if t.size == 0 { 100.0 } else { durable as f64 * 100.0 / t.size as f64 },
                "state": t.state.to_string(),
                "updated_at_ms": t.updated_at_ms,
            })
        })
        .collect();
    if json {
        println!("{}", serde_json::Value::Array(rows));
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no unfinished transfers in {}", state_dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<10} {:<5} {:>6} {:>10} {:<8} NAME",
        "ID", "DIR", "DONE", "SIZE", "STATE"
    );
    for r in rows {
        println!(
            "{:<10} {:<5} {:>5.1}% {:>10} {:<8} {}",
            &r["id"].as_str().unwrap_or("")[..8],
            r["direction"].as_str().unwrap_or(""),
            r["percent"].as_f64().unwrap_or(0.0),
            human(r["size"].as_u64().unwrap_or(0)),
            r["state"].as_str().unwrap_or(""),
            r["name"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// "256MiB", "1GiB", "10MB", "4096" → bytes.
pub(crate) fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .with_context(|| format!("{s:?} is not a size; write e.g. 256MiB, 1GiB or 10MB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => bail!("unknown size unit {other:?} in {s:?}; use B, KB, KiB, MB, MiB, GB or GiB"),
    };
    n.checked_mul(mult)
        .with_context(|| format!("{s:?} is too large"))
}

/// Bytes for people.
pub(crate) fn human(n: u64) -> String {
    let f = n as f64;
    if f >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", f / (1u64 << 30) as f64)
    } else if f >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", f / (1u64 << 20) as f64)
    } else if f >= 1024.0 {
        format!("{:.1} KiB", f / 1024.0)
    } else {
        format!("{n} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes_with_units() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("10MB").unwrap(), 10_000_000);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert!(parse_size("12 parsecs").is_err());
    }

    #[test]
    fn clap_definition_is_consistent() {
        cli_command().debug_assert();
    }

    /// Every `env = "…"` of every option is documented in ENVIRONMENT (man
    /// page, --help), so a new one cannot be left out.
    #[test]
    fn every_env_var_an_option_reads_is_documented() {
        fn walk(cmd: &clap::Command, out: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                if let Some(v) = a.get_env() {
                    out.push(v.to_string_lossy().into_owned());
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, out);
            }
        }
        let mut vars = Vec::new();
        walk(&cli_command(), &mut vars);
        assert!(vars.iter().any(|v| v == "GATEWAY_STATE"), "{vars:?}");
        for v in vars {
            assert!(
                ENVIRONMENT.iter().any(|(name, _)| *name == v),
                "{v} is read by an option but missing from ENVIRONMENT"
            );
        }
    }
}
