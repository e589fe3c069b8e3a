//! The progress bar on stderr while a run goes: its phase, the time, answers a second and
//! errors. Only on a terminal and without `--quiet`: into a file it would be thousands of
//! redrawn lines.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
    shown: bool,
    /// When the rate was last taken, and the answers then.
    last: Rc<Cell<(Instant, u64)>>,
}

impl Progress {
    /// A bar over `planned_secs` (a phased plan's length), or a spinner for a run of unknown
    /// length.
    pub fn new(quiet: bool, planned_secs: Option<f64>) -> Progress {
        let shown = !quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
        let target = if shown {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let (bar, template) = match planned_secs {
            Some(secs) => (
                ProgressBar::with_draw_target(Some(secs.ceil() as u64), target),
                "{spinner} {elapsed_precise} [{bar:24}] {pos}/{len} s  {msg}",
            ),
            None => (
                ProgressBar::with_draw_target(None, target),
                "{spinner} {elapsed_precise}  {msg}",
            ),
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        Progress {
            bar,
            shown,
            last: Rc::new(Cell::new((Instant::now(), 0))),
        }
    }

    pub fn is_shown(&self) -> bool {
        self.shown
    }

    /// Redraws with the figures now: `answered` is the run's answers so far (the rate is
    /// taken since the last call), `more` what this kind of run adds.
    pub fn update(&self, phase: &str, elapsed_secs: u64, answered: u64, errors: u64, more: &str) {
        let (then, before) = self.last.replace((Instant::now(), answered));
        let rate = answered.saturating_sub(before) as f64 / then.elapsed().as_secs_f64().max(1e-3);
        self.bar.set_position(elapsed_secs);
        self.bar.set_message(format!(
            "{phase} | {rate:.0} answers/s | errors {errors} | {more}"
        ));
    }

    /// Clears the bar: the summary follows.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
