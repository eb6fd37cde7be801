//! `gateway completions SHELL` and `gateway man [--dir DIR]`, both generated
//! from the clap definition so they can never drift from the real options.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Command;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, roman};

use crate::{ENVIRONMENT, EXIT_CODES};

/// Writes `bytes` to stdout. A reader that went away (`gateway man | head`)
/// is not an error: what it wanted, it got.
fn to_stdout(bytes: &[u8]) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e).context("cannot write to stdout"),
    }
}

/// The completion script for `shell`, on stdout.
pub(crate) fn completions(shell: clap_complete::Shell, mut cmd: Command) -> Result<ExitCode> {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "gateway", &mut buf);
    to_stdout(&buf)
}

/// `gateway man`: the whole manual as one page on stdout. With `dir`:
/// that page as `DIR/gateway.1` plus one page per subcommand
/// (`gateway-send.1`, `gateway-peers-add.1`, …), each path printed.
pub(crate) fn man(cmd: Command, dir: Option<&Path>) -> Result<ExitCode> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let page = full_page(&cmd)?;
    let Some(dir) = dir else {
        return to_stdout(&page);
    };
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the directory {}", dir.display()))?;
    let mut written = Vec::new();
    let top = dir.join("gateway.1");
    std::fs::write(&top, &page).with_context(|| format!("cannot write {}", top.display()))?;
    written.push(top);
    for sub in subcommands(&cmd) {
        let man = Man::new(sub.clone());
        let path = dir.join(man.get_filename());
        let mut rendered = Vec::new();
        man.render(&mut rendered)?;
        // clap_mangen drops the empty date from `.TH`, shifting the source
        // into its place: put our own title line instead of its.
        let mut buf = title(&sub_title(sub).to_uppercase());
        for line in String::from_utf8_lossy(&rendered).lines() {
            if !line.starts_with(".TH ") {
                buf.extend(line.as_bytes());
                buf.push(b'\n');
            }
        }
        buf.extend(trailer(true));
        let buf = one_preamble(&buf);
        std::fs::write(&path, &buf).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    let list: String = written
        .iter()
        .map(|p| format!("{}\n", p.display()))
        .collect();
    to_stdout(list.as_bytes())
}

/// `.TH` with an empty date (reproducible: the page does not change with the
/// day it was generated), the version as source, section 1.
fn title(name: &str) -> Vec<u8> {
    format!(
        ".TH {name} 1 \"\" \"gateway {}\" \"User Commands\"\n",
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes()
}

/// Every visible subcommand, depth first (`peers`, `peers add`, …).
fn subcommands(cmd: &Command) -> Vec<&Command> {
    let mut all = Vec::new();
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        all.push(sub);
        all.extend(subcommands(sub));
    }
    all
}

/// `gateway-peers-add` for `gateway peers add` (the built display name).
fn sub_title(sub: &Command) -> String {
    sub.get_display_name()
        .unwrap_or_else(|| sub.get_name())
        .to_string()
}

/// The page for the whole command: NAME … OPTIONS as clap_mangen renders
/// them, then COMMANDS with a subsection per subcommand (its synopsis,
/// description and own options), EXIT STATUS, ENVIRONMENT, FILES.
fn full_page(cmd: &Command) -> Result<Vec<u8>> {
    let man = Man::new(cmd.clone());
    let mut w = title("GATEWAY");
    man.render_name_section(&mut w)?;
    man.render_synopsis_section(&mut w)?;
    let mut r = Roff::new();
    r.control("SH", ["DESCRIPTION"]);
    r.text([roman(
        "gateway moves a file or a directory from one Linux box to another over every link \
         they share at once (TCP over Ethernet and Wi-Fi, serial lines, USB cables; Bluetooth \
         when its driver lands). The file is cut into chunks, each link pulls chunks as fast as \
         it carries them, and the receiver writes each chunk at its offset. A dead link costs \
         only its share; a stopped or killed transfer resumes when the same command is run again.",
    )]);
    r.control("PP", []);
    r.text([
        roman("Nodes exchange files only once they trust each other: run "),
        bold("gateway pair"),
        roman(" on one node and "),
        bold("gateway pair CODE --to SEL"),
        roman(" on the other, then "),
        bold("gateway serve --dir DIR"),
        roman(" on the receiver and "),
        bold("gateway send PATH --to NAME"),
        roman(" on the sender."),
    ]);
    w.extend(r.render().into_bytes());
    man.render_options_section(&mut w)?;

    let mut r = Roff::new();
    r.control("SH", ["COMMANDS"]);
    r.text([
        roman(
            "Global options (above) go before or after the command. Each command also has its \
             own page when installed with ",
        ),
        bold("gateway man --dir DIR"),
        roman(", e.g. gateway-send(1)."),
    ]);
    w.extend(r.render().into_bytes());
    for sub in subcommands(cmd) {
        w.extend(sub_section(sub)?);
    }
    w.extend(trailer(false));
    man.render_version_section(&mut w)?;
    Ok(one_preamble(&w))
}

/// Every piece clap_mangen and roff render starts with the same two-line
/// apostrophe preamble; a page needs it once. Also makes the page ASCII.
fn one_preamble(page: &[u8]) -> Vec<u8> {
    const PREAMBLE: [&str; 2] = [r".ie \n(.g .ds Aq \(aq", ".el .ds Aq '"];
    let text = String::from_utf8_lossy(page);
    let mut out = String::with_capacity(text.len());
    let mut seen = false;
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line == PREAMBLE[0] && lines.peek() == Some(&PREAMBLE[1]) {
            lines.next();
            if seen {
                continue;
            }
            seen = true;
            out.push_str(PREAMBLE[0]);
            out.push('\n');
            out.push_str(PREAMBLE[1]);
            out.push('\n');
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    ascii(&out).into_bytes()
}

/// Non-ASCII characters (—, …) as groff escapes (`\[u2014]`), so the page
/// reads the same under groff without preconv, and under mandoc.
fn ascii(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            out.push_str(&format!("\\[u{:04X}]", c as u32));
        }
    }
    out
}

/// One `.SS` per subcommand: synopsis, description, its own options (the
/// global ones and --help are already on the page once).
fn sub_section(sub: &Command) -> Result<Vec<u8>> {
    let own = sub.clone().mut_args(|a| {
        if a.is_global_set() || a.get_id() == "help" {
            a.hide(true)
        } else {
            a
        }
    });
    let man = Man::new(own.clone());
    let mut body = Vec::new();
    man.render_synopsis_section(&mut body)?;
    man.render_description_section(&mut body)?;
    if own.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut body)?;
    }
    if own.has_subcommands() {
        let mut r = Roff::new();
        r.control("PP", []);
        let names: Vec<String> = subcommands(&own)
            .iter()
            .map(|s| s.get_bin_name().unwrap_or(s.get_name()).to_string())
            .collect();
        r.text([roman(format!("Subcommands: {}.", names.join(", ")))]);
        body.extend(r.render().into_bytes());
    }
    let name = sub.get_bin_name().unwrap_or(sub.get_name());
    let mut r = Roff::new();
    r.control("SS", [name]);
    let mut out = r.render().into_bytes();
    // The pieces come with their own `.SH` headings; inside a subsection
    // they become paragraph breaks.
    let mut first = true;
    for line in String::from_utf8_lossy(&body).lines() {
        if line.starts_with(".SH ") {
            if !first {
                out.extend(b".PP\n");
            }
            first = false;
        } else {
            out.extend(line.as_bytes());
            out.push(b'\n');
        }
    }
    Ok(out)
}

/// EXIT STATUS, ENVIRONMENT, FILES (and SEE ALSO on a subcommand's page).
fn trailer(see_also: bool) -> Vec<u8> {
    let mut r = Roff::new();
    r.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in EXIT_CODES {
        r.control("TP", []);
        r.text([bold(code.to_string())]);
        r.text([roman(*meaning)]);
    }
    r.control("SH", ["ENVIRONMENT"]);
    for (var, meaning) in ENVIRONMENT {
        r.control("TP", []);
        r.text([bold(*var)]);
        r.text([roman(*meaning)]);
    }
    r.control("SH", ["FILES"]);
    r.control("TP", []);
    r.text([bold("$XDG_STATE_HOME/gateway/node.key")]);
    r.text([roman(
        "This node's key (mode 0600), created on first start; its fingerprint is the node id.",
    )]);
    r.control("TP", []);
    r.text([bold("$XDG_STATE_HOME/gateway/gateway.db")]);
    r.text([roman(
        "SQLite: transfers and their durable chunks, peers, trust, static addresses.",
    )]);
    r.control("TP", []);
    r.text([bold("DIR/NAME.ID.gateway-part")]);
    r.text([roman(
        "A file being received; linked into place once its BLAKE3 is verified.",
    )]);
    if see_also {
        r.control("SH", ["SEE ALSO"]);
        r.text([roman("gateway(1)")]);
    }
    r.render().into_bytes()
}
