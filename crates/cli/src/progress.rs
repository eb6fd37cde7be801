//! Progress bars: one for the whole file, one per link.

use std::time::Duration;

use gateway_node::send::SendProgress;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::watch;

/// Draws `rx` until the sender drops it. Draws nothing when stderr is not a terminal.
pub(crate) async fn render(mut rx: watch::Receiver<SendProgress>) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
    let total_style = ProgressStyle::with_template(
        "{prefix:<34} [{bar:30.green/white}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("█▓░");
    let link_style = ProgressStyle::with_template(
        "  {prefix:<32} [{bar:30.cyan/white}] {bytes:>10} {binary_bytes_per_sec:>12} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("█▓░");
    let mut total: Option<ProgressBar> = None;
    let mut links: Vec<ProgressBar> = Vec::new();
    loop {
        let p = rx.borrow_and_update().clone();
        if p.total > 0 || !p.links.is_empty() {
            let t = total.get_or_insert_with(|| {
                let b = multi.add(ProgressBar::new(p.total.max(1)));
                b.set_style(total_style.clone());
                b.set_prefix(p.name.clone());
                b.set_position(p.resumed);
                b.reset_eta();
                b
            });
            t.set_length(p.total.max(1));
            t.set_position(p.acked);
            t.set_message(p.status.clone());
            while links.len() < p.links.len() {
                let l = &p.links[links.len()];
                let b = multi.add(ProgressBar::new(p.total.max(1)));
                b.set_style(link_style.clone());
                b.set_prefix(l.selector.clone());
                links.push(b);
            }
            for (b, l) in links.iter().zip(&p.links) {
                b.set_position(l.acked);
                b.set_message(if l.up {
                    String::new()
                } else {
                    "down".to_string()
                });
            }
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { break },
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    // `abandon` keeps each bar where it stopped (`finish` would fill it).
    for b in links {
        b.abandon();
    }
    if let Some(t) = total {
        t.abandon();
    }
}
