//! `tiffin roster import`: a bundle imported from the command line, with a progress bar on a
//! terminal, the counts on stdout and every bad line on stderr.

use super::{Options, Refusal, Report, Source, Staged};
use crate::db::Db;
use std::io::Write;
use std::path::Path;

/// Imports the bundle at `path` (a folder or a zip); `json` prints the report as JSON.
pub async fn import(db: &Db, path: &Path, options: &Options, json: bool) -> anyhow::Result<()> {
    let source = if path.is_dir() {
        Source::Dir(path.to_owned())
    } else {
        Source::Zip(path.to_owned())
    };
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let progress = |staged: &Staged| {
        if let Staged::Read { file, rows } = staged {
            bar.set_message(format!("{file}: {rows} rows staged"));
        }
    };
    let outcome = super::import(db, source, options, &progress).await;
    bar.finish_and_clear();
    match outcome {
        Ok(report) => {
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                print_report(&mut out, &report)?;
            }
            Ok(())
        }
        Err(Refusal::Invalid { problems, more }) => {
            let mut err = std::io::stderr().lock();
            for p in &problems {
                writeln!(err, "{}:{}: {}", p.file, p.line, p.reason)?;
            }
            if more {
                writeln!(err, "(and more)")?;
            }
            anyhow::bail!(
                "bundle refused: {} bad lines; nothing imported",
                problems.len()
            )
        }
        Err(Refusal::Unreadable(why)) => anyhow::bail!("bundle refused: {why}"),
        Err(Refusal::Db(e)) => anyhow::bail!("import failed, nothing imported: {e}"),
    }
}

fn print_report(out: &mut impl Write, r: &Report) -> std::io::Result<()> {
    let what = if r.dry_run {
        "would change (dry run)"
    } else {
        "imported"
    };
    writeln!(out, "OneRoster {} {} bundle {what}:", r.version, r.mode)?;
    writeln!(
        out,
        "{:<10} {:>9} {:>9} {:>11} {:>9}",
        "", "created", "updated", "deactivated", "unchanged"
    )?;
    for (kind, c) in [
        ("schools", r.schools),
        ("students", r.students),
        ("guardians", r.guardians),
        ("links", r.links),
        ("cards", r.cards),
    ] {
        writeln!(
            out,
            "{kind:<10} {:>9} {:>9} {:>11} {:>9}",
            c.created, c.updated, c.deactivated, c.unchanged
        )?;
    }
    writeln!(out, "skipped (other roles or schools): {}", r.skipped)
}
