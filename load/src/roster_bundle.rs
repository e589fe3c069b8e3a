//! `tiffin-load roster-bundle`: a OneRoster 1.1 bulk bundle of a district's size (schools,
//! students, their parents, guardians and relatives, the links both ways, Tiffin's cards.csv
//! and allergies.csv) for measuring `tiffin roster import`. Every line is a function of the
//! seed and the person's number, so the files are streamed to disk in bounded memory, and
//! `--from-seed` writes the same district with a share of its people changed (a nightly
//! re-sync): names, emails and phones edited, some students moved, some gone, some new. What
//! an import of the bundle should report is written beside it, as `expected.json`.

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

#[derive(Args, Clone, Debug)]
pub struct Options {
    /// Students in the district.
    #[arg(long, default_value_t = 1000)]
    pub students: u64,
    /// Parents, guardians and relatives (each linked to one or two students).
    #[arg(long, default_value_t = 1500)]
    pub guardians: u64,
    /// Schools (orgs of type school, under one district org).
    #[arg(long, default_value_t = 10)]
    pub schools: u64,
    /// The district's seed; with `--from-seed`, the seed of the changes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the district of this seed with `--change-percent` of its people changed.
    #[arg(long)]
    pub from_seed: Option<u64>,
    /// Share of people changed (with `--from-seed`), in percent: a tenth of the changed
    /// students are moved to another school, a tenth are gone, and a tenth as many are new.
    #[arg(long, default_value_t = 1.0)]
    pub change_percent: f64,
    /// The folder the bundle is written to (created; files in it are replaced).
    #[arg(long)]
    pub out: PathBuf,
}

const GIVEN: [&str; 24] = [
    "ana", "ben", "chloe", "dev", "elena", "farid", "grace", "hiro", "ines", "jamal", "kira",
    "liam", "maya", "noah", "olga", "priya", "quinn", "rosa", "sam", "tariq", "uma", "victor",
    "wen", "yara",
];

const FAMILY: [&str; 24] = [
    "adams", "baker", "chen", "diaz", "evans", "fischer", "garcia", "haddad", "ito", "jones",
    "kim", "lopez", "moreau", "nguyen", "okafor", "patel", "quispe", "ruiz", "smith", "tanaka",
    "usman", "volkov", "walsh", "young",
];

/// US area codes the phone library knows to be in service.
const AREA_CODES: [u64; 8] = [212, 312, 415, 503, 617, 713, 808, 206];

const ALLERGENS: [&str; 6] = ["peanut", "milk", "egg", "wheat", "soy", "sesame"];

/// What happens to a person in a changed bundle.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    Same,
    /// One of name, email or phone edited (`n` says which).
    Edit(u64),
    Moved,
    Gone,
}

#[derive(Clone, Copy)]
enum Kind {
    School = 1,
    Student = 2,
    Guardian = 3,
    Change = 4,
    Card = 5,
}

fn mix(mut z: u64) -> u64 {
    // splitmix64: cheap, and every input bit reaches every output bit.
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct District {
    students: u64,
    guardians: u64,
    schools: u64,
    /// The district's seed (sourcedIds, names, schools).
    seed: u64,
    /// The changes' seed and share in hundredths of a percent, for a changed bundle.
    changes: Option<(u64, u64)>,
    /// New students (numbered after the district's).
    added: u64,
    /// Exchanges 200-999 that are not N11 or 555.
    exchanges: Vec<u64>,
}

impl District {
    fn hash(&self, seed: u64, kind: Kind, i: u64) -> u64 {
        mix(mix(seed ^ ((kind as u64) << 56)) ^ i)
    }

    /// A sourcedId shaped like a SIS's GUID; the last group is the number, so ids never collide.
    fn sourced_id(&self, kind: Kind, i: u64) -> String {
        let h = self.hash(self.seed, kind, i);
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            h >> 32,
            (h >> 16) & 0xffff,
            (h >> 4) & 0xfff,
            (kind as u64) << 8 | (h & 0xff),
            i
        )
    }

    fn change(&self, kind: Kind, i: u64) -> Change {
        let Some((seed, bps)) = self.changes else {
            return Change::Same;
        };
        let x = self.hash(seed, Kind::Change, i ^ ((kind as u64) << 48)) % 10_000;
        if x >= bps {
            return Change::Same;
        }
        match (kind, x % 10) {
            (Kind::Student, 0) if i < self.students => Change::Gone,
            (Kind::Student, 1) if self.schools > 1 => Change::Moved,
            _ => Change::Edit(x / 10),
        }
    }

    fn present(&self, student: u64) -> bool {
        student >= self.students || self.change(Kind::Student, student) != Change::Gone
    }

    fn school_of(&self, student: u64) -> u64 {
        let school = self.hash(self.seed, Kind::School, student) % self.schools;
        if self.change(Kind::Student, student) == Change::Moved {
            (school + 1) % self.schools
        } else {
            school
        }
    }

    /// A guardian's students: one, every fourth a sibling too.
    fn students_of(&self, guardian: u64) -> Vec<u64> {
        let first = guardian % self.students;
        let mut out = vec![first];
        if guardian.is_multiple_of(4) && self.students > 1 {
            out.push((first + 1) % self.students);
        }
        out.retain(|s| self.present(*s));
        out
    }

    /// A student's guardians as the student's own line lists them: those whose first student
    /// it is (a new student names one existing guardian).
    fn guardians_of(&self, student: u64) -> Vec<u64> {
        if self.guardians == 0 {
            return Vec::new();
        }
        if student >= self.students {
            return vec![self.hash(self.seed, Kind::Guardian, student) % self.guardians];
        }
        (0..)
            .map(|k| student + k * self.students)
            .take_while(|g| *g < self.guardians)
            .collect()
    }

    fn name(&self, kind: Kind, i: u64, edited: bool) -> (&'static str, &'static str) {
        let h = self.hash(self.seed, kind, i);
        let given = GIVEN[(h >> 8) as usize % GIVEN.len()];
        let family = (h >> 24) as usize % FAMILY.len() + usize::from(edited);
        (given, FAMILY[family % FAMILY.len()])
    }

    /// A dialable US number, one per number `n`: an area code, an exchange 200-999 that is not
    /// N11 or 555, a line.
    fn phone(&self, n: u64) -> String {
        let area = AREA_CODES[(n % AREA_CODES.len() as u64) as usize];
        let rest = n / AREA_CODES.len() as u64;
        let exchange = self.exchanges[(rest / 10_000) as usize % self.exchanges.len()];
        format!("({area}) {exchange}-{:04}", rest % 10_000)
    }
}

fn csv_list(ids: impl Iterator<Item = String>) -> String {
    let ids: Vec<String> = ids.collect();
    if ids.len() > 1 {
        format!("\"{}\"", ids.join(","))
    } else {
        ids.concat()
    }
}

fn create(dir: &Path, name: &str) -> anyhow::Result<BufWriter<std::fs::File>> {
    let path = dir.join(name);
    let file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    Ok(BufWriter::with_capacity(1 << 20, file))
}

const MANIFEST: &str = "propertyName,value
manifest.version,1.0
oneroster.version,1.1
file.academicSessions,absent
file.categories,absent
file.classes,absent
file.classResources,absent
file.courseResources,absent
file.courses,absent
file.demographics,absent
file.enrollments,absent
file.lineItems,absent
file.orgs,bulk
file.resources,absent
file.results,absent
file.users,bulk
source.systemName,tiffin-load roster-bundle
";

const USERS_HEADER: &str = "sourcedId,status,dateLastModified,enabledUser,orgSourcedIds,role,username,userIds,givenName,familyName,middleName,identifier,email,sms,phone,agentSourcedIds,grades,password\n";

/// Counts of one kind, as the import reports them.
#[derive(Default)]
struct Counts {
    created: u64,
    updated: u64,
    deactivated: u64,
    unchanged: u64,
}

impl Counts {
    fn json(&self) -> Value {
        json!({"created": self.created, "updated": self.updated,
               "deactivated": self.deactivated, "unchanged": self.unchanged})
    }
}

/// Writes the bundle; answers what importing it (after the district's own bundle, for a
/// changed one) should report.
pub fn write(options: &Options) -> anyhow::Result<Value> {
    if options.schools == 0 || options.students == 0 {
        bail!("--schools and --students must be at least 1");
    }
    if !(0.0..=100.0).contains(&options.change_percent) {
        bail!("--change-percent is 0 to 100");
    }
    let bps = (options.change_percent * 100.0).round() as u64;
    let district = District {
        students: options.students,
        guardians: options.guardians,
        schools: options.schools,
        seed: options.from_seed.unwrap_or(options.seed),
        changes: options.from_seed.map(|_| (options.seed, bps)),
        added: if options.from_seed.is_some() {
            options.students * bps / 100_000
        } else {
            0
        },
        exchanges: (200..1000).filter(|e| e % 100 != 11 && *e != 555).collect(),
    };
    let changed = district.changes.is_some();
    let dir = &options.out;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("manifest.csv"), MANIFEST)?;

    let school_sid = |k: u64| district.sourced_id(Kind::School, k);
    let mut orgs = create(dir, "orgs.csv")?;
    orgs.write_all(b"sourcedId,status,dateLastModified,name,type,identifier,parentSourcedId\n")?;
    let district_sid = school_sid(u64::MAX >> 16);
    writeln!(orgs, "{district_sid},,,Generated District,district,D,")?;
    for k in 0..options.schools {
        writeln!(
            orgs,
            "{},,,School {k},school,S{k},{district_sid}",
            school_sid(k)
        )?;
    }
    orgs.flush()?;

    let mut users = create(dir, "users.csv")?;
    let mut cards = create(dir, "cards.csv")?;
    let mut allergies = create(dir, "allergies.csv")?;
    users.write_all(USERS_HEADER.as_bytes())?;
    cards.write_all(b"sourcedId,cardUid\n")?;
    allergies.write_all(b"sourcedId,allergens\n")?;
    let (mut students, mut guardians, mut links, mut new_cards) = (
        Counts::default(),
        Counts::default(),
        Counts::default(),
        Counts::default(),
    );
    for i in 0..options.students + district.added {
        let change = district.change(Kind::Student, i);
        let new = i >= options.students;
        match change {
            Change::Gone => {
                students.deactivated += 1;
                continue;
            }
            _ if new || !changed => students.created += 1,
            Change::Same => students.unchanged += 1,
            Change::Edit(_) | Change::Moved => students.updated += 1,
        }
        let sid = district.sourced_id(Kind::Student, i);
        // An edited student has a new name or a new email.
        let edit = match change {
            Change::Edit(n) => Some(n % 2),
            _ => None,
        };
        let (given, family) = district.name(Kind::Student, i, edit == Some(0));
        let email_edit = edit == Some(1);
        let version = if email_edit { ".v2" } else { "" };
        let agents = csv_list(
            district
                .guardians_of(i)
                .into_iter()
                .map(|g| district.sourced_id(Kind::Guardian, g)),
        );
        writeln!(
            users,
            "{sid},,,true,{},student,{given}.{family}.{i},,{},{},,{i},{given}.{family}.{i}{version}@students.test,,,{agents},{:02},",
            school_sid(district.school_of(i)),
            capital(given),
            capital(family),
            district.hash(district.seed, Kind::Student, i) % 12 + 1,
        )?;
        let card = district.hash(district.seed, Kind::Card, i) as u32;
        writeln!(cards, "{sid},{card:08X}{i:08X}")?;
        if new || !changed {
            new_cards.created += 1;
        } else {
            new_cards.unchanged += 1;
        }
        if new && district.guardians > 0 {
            links.created += 1;
        }
        let h = district.hash(district.seed, Kind::Student, i);
        if h.is_multiple_of(20) {
            let a = ALLERGENS[(h >> 40) as usize % ALLERGENS.len()];
            let b = ALLERGENS[(h >> 48) as usize % ALLERGENS.len()];
            writeln!(allergies, "{sid},{a};{b}")?;
        }
    }
    for j in 0..options.guardians {
        let change = district.change(Kind::Guardian, j);
        match change {
            _ if !changed => guardians.created += 1,
            Change::Same => guardians.unchanged += 1,
            _ => guardians.updated += 1,
        }
        let edit = match change {
            Change::Edit(n) => Some(n % 3),
            _ => None,
        };
        let sid = district.sourced_id(Kind::Guardian, j);
        let (given, family) = district.name(Kind::Guardian, j, edit == Some(0));
        let version = if edit == Some(1) { ".v2" } else { "" };
        // A changed number is one no original has.
        let number = if edit == Some(2) {
            options.guardians + j
        } else {
            j
        };
        let role = match j % 10 {
            7 => "guardian",
            9 => "relative",
            _ => "parent",
        };
        let first = j % options.students;
        let mine = district.students_of(j);
        if !changed {
            links.created += mine.len() as u64;
        }
        let agents = csv_list(mine.iter().map(|s| district.sourced_id(Kind::Student, *s)));
        // Its school is its first student's before any move.
        let school = district.hash(district.seed, Kind::School, first) % options.schools;
        writeln!(
            users,
            "{sid},,,true,{},{role},,,{},{},,,{given}.{family}.{j}{version}@family.test,{},,{agents},,",
            school_sid(school),
            capital(given),
            capital(family),
            district.phone(number),
        )?;
        if changed {
            links.unchanged += mine.len() as u64;
        }
    }
    for f in [&mut users, &mut cards, &mut allergies] {
        f.flush()?;
    }
    let schools = if changed {
        Counts {
            unchanged: options.schools,
            ..Counts::default()
        }
    } else {
        Counts {
            created: options.schools,
            ..Counts::default()
        }
    };
    let expected = json!({
        "schools": schools.json(),
        "students": students.json(),
        "guardians": guardians.json(),
        "links": links.json(),
        "cards": new_cards.json(),
        "skipped": 0,
    });
    std::fs::write(
        dir.join("expected.json"),
        serde_json::to_string_pretty(&expected)?,
    )?;
    Ok(expected)
}

fn capital(name: &str) -> String {
    let mut chars = name.chars();
    chars.next().map_or_else(String::new, |c| {
        c.to_uppercase().chain(chars).collect::<String>()
    })
}
