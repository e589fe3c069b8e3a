//! Reading a bundle (a folder or a zip of CSV files) record by record on a thread of its own,
//! handing staged rows to the import in chunks through a bounded channel: memory holds a few
//! chunks, not the bundle, and parsing runs beside the database's work.

use super::validate::{self, UserFields};
use crate::store::roster::{AgentStage, Manifest, Problem, Staged};
use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use tokio::sync::mpsc::Sender;

/// Where a bundle is.
#[derive(Debug, Clone)]
pub enum Source {
    Dir(PathBuf),
    Zip(PathBuf),
}

/// What the reader knows before it starts: imported schools (sourcedId to Tiffin id and phone
/// region) and the phone region of schools the bundle creates.
pub struct Known {
    pub schools: HashMap<String, (String, String)>,
    pub default_region: String,
}

/// Rows per chunk handed over.
const CHUNK: usize = 2000;

enum Bundle {
    Dir(PathBuf),
    Zip {
        archive: Box<zip::ZipArchive<std::fs::File>>,
        prefix: String,
    },
}

impl Bundle {
    fn open(source: &Source) -> Result<Bundle, String> {
        match source {
            Source::Dir(dir) => Ok(Bundle::Dir(dir.clone())),
            Source::Zip(path) => {
                let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
                let archive =
                    zip::ZipArchive::new(file).map_err(|e| format!("not a zip archive: {e}"))?;
                // The files may sit in one folder of the archive.
                let prefix = archive
                    .file_names()
                    .find(|n| *n == "manifest.csv" || n.ends_with("/manifest.csv"))
                    .map(|n| n.trim_end_matches("manifest.csv").to_owned())
                    .unwrap_or_default();
                Ok(Bundle::Zip {
                    archive: Box::new(archive),
                    prefix,
                })
            }
        }
    }

    fn has(&self, name: &str) -> bool {
        match self {
            Bundle::Dir(dir) => dir.join(name).is_file(),
            Bundle::Zip { archive, prefix } => {
                archive.index_for_name(&format!("{prefix}{name}")).is_some()
            }
        }
    }

    /// Runs `read` over the file's bytes.
    fn with_file<T>(
        &mut self,
        name: &str,
        read: impl FnOnce(&mut dyn Read) -> T,
    ) -> Result<T, String> {
        match self {
            Bundle::Dir(dir) => {
                let mut file = std::fs::File::open(dir.join(name))
                    .map_err(|e| format!("cannot open {name}: {e}"))?;
                Ok(read(&mut std::io::BufReader::new(&mut file)))
            }
            Bundle::Zip { archive, prefix } => {
                let mut file = archive
                    .by_name(&format!("{prefix}{name}"))
                    .map_err(|e| format!("cannot read {name}: {e}"))?;
                Ok(read(&mut file))
            }
        }
    }
}

/// The receiving end went away (the import failed): stop reading.
struct Gone;

/// Hands rows over in chunks and problems as found.
struct Out<'a> {
    tx: &'a Sender<Staged>,
    file: &'static str,
    rows: std::cell::Cell<u64>,
}

impl<'a> Out<'a> {
    fn send(&self, staged: Staged) -> Result<(), Gone> {
        self.tx.blocking_send(staged).map_err(|_| Gone)
    }

    fn problem(&self, line: u64, reason: impl Into<String>) -> Result<(), Gone> {
        self.send(Staged::Problem(Problem {
            file: self.file.to_owned(),
            line,
            reason: reason.into(),
        }))
    }

    fn new(tx: &'a Sender<Staged>, file: &'static str) -> Out<'a> {
        Out {
            tx,
            file,
            rows: std::cell::Cell::new(0),
        }
    }

    /// Sends `buffer` when full (or `flush`); rows of the file's own kind (`counted`) also
    /// move the progress on.
    fn chunk<T>(
        &self,
        buffer: &mut Vec<T>,
        flush: bool,
        counted: bool,
        wrap: fn(Vec<T>) -> Staged,
    ) -> Result<(), Gone> {
        if buffer.len() >= CHUNK || (flush && !buffer.is_empty()) {
            let n = buffer.len() as u64;
            self.send(wrap(std::mem::take(buffer)))?;
            if counted {
                self.rows.set(self.rows.get() + n);
                self.send(Staged::Read {
                    file: self.file,
                    rows: self.rows.get(),
                })?;
            }
        }
        Ok(())
    }
}

/// A file's columns by name.
struct Columns(HashMap<String, usize>);

impl Columns {
    fn get<'r>(&self, record: &'r csv::StringRecord, name: &str) -> &'r str {
        self.0
            .get(name)
            .and_then(|&i| record.get(i))
            .unwrap_or_default()
    }

    fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// Reads every record of `file`, calling `row` with its columns, the record and its line;
/// a line the CSV reader cannot read, or `row` refuses, is a problem.
fn each_record(
    bundle: &mut Bundle,
    out: &Out<'_>,
    required: &[&str],
    mut row: impl FnMut(&Columns, &csv::StringRecord, i64) -> Result<Result<(), String>, Gone>,
) -> Result<Result<(), String>, Gone> {
    let file = out.file;
    let read = bundle.with_file(file, |reader| -> Result<Result<(), String>, Gone> {
        let mut csv = csv::ReaderBuilder::new().from_reader(reader);
        let columns = match csv.headers() {
            Ok(h) => Columns(
                h.iter()
                    .enumerate()
                    .map(|(i, name)| (name.trim_start_matches('\u{feff}').trim().to_owned(), i))
                    .collect(),
            ),
            Err(e) => return Ok(Err(format!("{file}: unreadable header: {e}"))),
        };
        let missing: Vec<&str> = required
            .iter()
            .copied()
            .filter(|c| !columns.has(c))
            .collect();
        if !missing.is_empty() {
            out.problem(1, format!("missing columns: {}", missing.join(", ")))?;
            return Ok(Ok(()));
        }
        let mut record = csv::StringRecord::new();
        loop {
            match csv.read_record(&mut record) {
                Ok(false) => return Ok(Ok(())),
                Ok(true) => {
                    let line = record.position().map_or(0, csv::Position::line);
                    // PostgreSQL's text holds no NUL: named here, not as a failed COPY.
                    if record.as_slice().contains('\0') {
                        out.problem(line, "a NUL character: no field may hold one")?;
                        continue;
                    }
                    if let Err(reason) = row(&columns, &record, line as i64)? {
                        out.problem(line, reason)?;
                    }
                }
                Err(e) => {
                    let line = e.position().map_or(0, csv::Position::line);
                    if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                        return Ok(Err(format!("{file}: {e}")));
                    }
                    out.problem(line, format!("unreadable line: {e}"))?;
                }
            }
        }
    });
    match read {
        Ok(result) => result,
        Err(why) => Ok(Err(why)),
    }
}

/// Reads the bundle into `tx`; runs on a thread of its own.
pub fn read_bundle(source: &Source, known: &Known, tx: &Sender<Staged>) {
    let unreadable = |why: String| {
        let _ = tx.blocking_send(Staged::Unreadable(why));
    };
    let mut bundle = match Bundle::open(source) {
        Ok(b) => b,
        Err(why) => return unreadable(why),
    };
    match read_files(&mut bundle, known, tx) {
        Ok(Ok(())) | Err(Gone) => {}
        Ok(Err(why)) => unreadable(why),
    }
}

fn read_files(
    bundle: &mut Bundle,
    known: &Known,
    tx: &Sender<Staged>,
) -> Result<Result<(), String>, Gone> {
    if !bundle.has("manifest.csv") {
        return Ok(Err("the bundle has no manifest.csv".into()));
    }
    let mut out = Out::new(tx, "manifest.csv");
    let mut properties: HashMap<String, (String, i64)> = HashMap::new();
    let read = each_record(bundle, &out, &["propertyName", "value"], |c, r, line| {
        let value = c.get(r, "value").trim().to_owned();
        properties.insert(c.get(r, "propertyName").trim().to_owned(), (value, line));
        Ok(Ok(()))
    })?;
    if let Err(why) = read {
        return Ok(Err(why));
    }
    let property = |name: &str| properties.get(name).map(|(v, l)| (v.as_str(), *l));
    let version = match property("oneroster.version") {
        Some((v, _)) if v == "1.1" || v.starts_with("1.2") => v.to_owned(),
        Some((v, line)) => {
            out.problem(
                line as u64,
                format!("oneroster.version {v:?}: Tiffin reads 1.1 and 1.2"),
            )?;
            v.to_owned()
        }
        None => {
            out.problem(1, "no oneroster.version")?;
            String::new()
        }
    };
    let mode = |file: &str| property(&format!("file.{file}")).map_or("absent", |(v, _)| v);
    let users_mode = mode("users");
    let present =
        |bundle: &Bundle, file: &str| mode(file) != "absent" && bundle.has(&format!("{file}.csv"));
    for file in ["orgs", "users", "roles"] {
        if mode(file) != "absent" && !bundle.has(&format!("{file}.csv")) {
            return Ok(Err(format!(
                "manifest.csv lists {file}.csv, which the bundle lacks"
            )));
        }
        if !matches!(mode(file), "absent" | "bulk" | "delta") {
            out.problem(
                1,
                format!("file.{file} is {:?}: bulk, delta or absent", mode(file)),
            )?;
        }
    }
    let manifest = Manifest {
        version,
        bulk: users_mode == "bulk",
        has_allergies: bundle.has("allergies.csv"),
    };
    out.send(Staged::Manifest(manifest))?;

    let mut regions: HashMap<String, String> = known
        .schools
        .iter()
        .map(|(sid, (_, region))| (sid.clone(), region.clone()))
        .collect();
    // Each school's Tiffin id by sourcedId: people are staged with theirs.
    let mut school_ids: HashMap<String, String> = known
        .schools
        .iter()
        .map(|(sid, (id, _))| (sid.clone(), id.clone()))
        .collect();
    if present(bundle, "orgs") {
        out = Out::new(tx, "orgs.csv");
        let mut rows = Vec::new();
        let read = each_record(
            bundle,
            &out,
            &["sourcedId", "name", "type"],
            |c, r, line| {
                if !c.get(r, "type").trim().eq_ignore_ascii_case("school") {
                    return Ok(Ok(()));
                }
                let sid = c.get(r, "sourcedId").trim();
                match validate::org(
                    line,
                    sid,
                    c.get(r, "name"),
                    c.get(r, "status"),
                    known.schools.get(sid),
                    &known.default_region,
                ) {
                    Ok(Some(org)) => {
                        regions.insert(org.sourced_id.clone(), org.phone_region.clone());
                        school_ids.insert(org.sourced_id.clone(), org.school_id.clone());
                        rows.push(org);
                    }
                    Ok(None) => {}
                    Err(why) => return Ok(Err(why)),
                }
                Ok(Ok(()))
            },
        )?;
        out.chunk(&mut rows, true, true, Staged::Orgs)?;
        if let Err(why) = read {
            return Ok(Err(why));
        }
    }
    if present(bundle, "users") {
        out = Out::new(tx, "users.csv");
        let read = read_users(bundle, &out, &regions, &school_ids, &known.default_region)?;
        if let Err(why) = read {
            return Ok(Err(why));
        }
    }
    if present(bundle, "roles") {
        out = Out::new(tx, "roles.csv");
        let mut rows = Vec::new();
        let read = each_record(bundle, &out, &["userSourcedId", "role"], |c, r, line| {
            let role = validate::role_line(
                line,
                c.get(r, "userSourcedId"),
                c.get(r, "role"),
                c.get(r, "roleType"),
                c.get(r, "orgSourcedId"),
                c.get(r, "status"),
            );
            match role {
                Ok(Some(role)) => rows.push(role),
                Ok(None) => {}
                Err(why) => return Ok(Err(why)),
            }
            out.chunk(&mut rows, false, true, Staged::Roles).map(Ok)
        })?;
        out.chunk(&mut rows, true, true, Staged::Roles)?;
        if let Err(why) = read {
            return Ok(Err(why));
        }
    }
    // Tiffin's own files: read whenever present.
    if bundle.has("cards.csv") {
        out = Out::new(tx, "cards.csv");
        let mut rows = Vec::new();
        let read = each_record(bundle, &out, &["sourcedId", "cardUid"], |c, r, line| {
            match validate::card(line, c.get(r, "sourcedId"), c.get(r, "cardUid")) {
                Ok(card) => rows.push(card),
                Err(why) => return Ok(Err(why)),
            }
            out.chunk(&mut rows, false, true, Staged::Cards).map(Ok)
        })?;
        out.chunk(&mut rows, true, true, Staged::Cards)?;
        if let Err(why) = read {
            return Ok(Err(why));
        }
    }
    if bundle.has("allergies.csv") {
        out = Out::new(tx, "allergies.csv");
        let mut rows = Vec::new();
        let read = each_record(bundle, &out, &["sourcedId", "allergens"], |c, r, line| {
            match validate::allergies(line, c.get(r, "sourcedId"), c.get(r, "allergens")) {
                Ok(a) => rows.push(a),
                Err(why) => return Ok(Err(why)),
            }
            out.chunk(&mut rows, false, true, Staged::Allergies).map(Ok)
        })?;
        out.chunk(&mut rows, true, true, Staged::Allergies)?;
        if let Err(why) = read {
            return Ok(Err(why));
        }
    }
    Ok(Ok(()))
}

fn read_users(
    bundle: &mut Bundle,
    out: &Out<'_>,
    regions: &HashMap<String, String>,
    school_ids: &HashMap<String, String>,
    default_region: &str,
) -> Result<Result<(), String>, Gone> {
    let mut people = Vec::new();
    let mut agents = Vec::new();
    let mut n = 0_i64;
    let required = ["sourcedId", "givenName", "familyName"];
    let read = each_record(bundle, out, &required, |c, r, line| {
        let org_column = if c.has("orgSourcedIds") {
            "orgSourcedIds"
        } else {
            "primaryOrgSourcedId"
        };
        let fields = UserFields {
            sourced_id: c.get(r, "sourcedId"),
            status: c.get(r, "status"),
            enabled_user: c.get(r, "enabledUser"),
            role: c.has("role").then(|| c.get(r, "role")),
            orgs: c.get(r, org_column),
            given_name: c.get(r, "givenName"),
            preferred_given_name: c.get(r, "preferredGivenName"),
            family_name: c.get(r, "familyName"),
            email: c.get(r, "email"),
            sms: c.get(r, "sms"),
            phone: c.get(r, "phone"),
        };
        let mut person = match validate::user(line, &fields, regions, default_region) {
            Ok(p) => p,
            Err(why) => return Ok(Err(why)),
        };
        person.school_id = person.org.as_ref().and_then(|o| school_ids.get(o)).cloned();
        for to in validate::list(c.get(r, "agentSourcedIds")) {
            if to != person.sourced_id {
                n += 1;
                agents.push(AgentStage {
                    n,
                    line,
                    from_sid: person.sourced_id.clone(),
                    to_sid: to,
                });
            }
        }
        people.push(person);
        out.chunk(&mut people, false, true, Staged::Users)?;
        out.chunk(&mut agents, false, false, Staged::Agents)?;
        Ok(Ok(()))
    })?;
    out.chunk(&mut people, true, true, Staged::Users)?;
    out.chunk(&mut agents, true, false, Staged::Agents)?;
    Ok(read)
}
