//! The kernel's ethical axioms.
//!
//! Operators can replace the axioms without rebuilding, so they live in `<data_dir>/axioms.json`.
//! When that file does not exist the kernel falls back to a default set compiled into the binary
//! (`default_axioms.json`), so a fresh install is never without a conscience. When the file exists
//! but is broken, the kernel does *not* fall back: a silently ignored custom file would hide the
//! operator's mistake, so the broken file is used as far as it is valid and every problem is
//! reported instead.
//!
//! # File format
//!
//! ```json
//! {
//!   "version": 1,
//!   "axioms": [
//!     {"id": "non_maleficence", "statement": "Do no harm.", "weight": 1.0},
//!     {"id": "honesty", "statement": "Do not deceive."}
//!   ]
//! }
//! ```
//!
//! - The top level is a JSON object with an `"axioms"` list. `"version"` is optional; if present it
//!   must be `1` (any other value is reported as a problem, and the axioms are read anyway).
//! - An axiom is valid when:
//!   - `id` is a non-empty string of lowercase ASCII letters, digits and underscores
//!     (`[a-z0-9_]+`) and no other axiom in the file uses the same id;
//!   - `statement` is a string that is not empty or only whitespace;
//!   - `weight`, if present, is a number greater than 0 and at most 1 (default `1.0`).
//! - Unknown keys, at the top level and inside axioms, are ignored.
//! - Invalid axioms are skipped and reported; valid ones are still used. Problems name the axiom
//!   by its 1-based position in the list, e.g. `axiom #3: missing "statement"`.
//! - Alignment is `min(1, valid axioms / 10)`: the kernel is considered fully aligned only when at
//!   least [`REQUIRED_AXIOMS`] valid axioms are loaded.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::Path;

use serde_json::Value;

/// Name of the operator-supplied axioms file inside the data directory.
pub const FILE_NAME: &str = "axioms.json";

/// Fewer valid axioms than this is treated as a partially configured conscience, so alignment
/// reports a fraction instead of pretending all is well.
pub const REQUIRED_AXIOMS: usize = 10;

/// Shipped inside the binary so the kernel has a complete set even with an empty data directory.
const DEFAULT_AXIOMS: &str = include_str!("default_axioms.json");

/// `source` of a set that came from the embedded defaults rather than a file.
const BUILT_IN_SOURCE: &str = "built-in";

/// A log line has to stay readable; the full list remains available in [`AxiomSet::problems`].
const MAX_LISTED_PROBLEMS: usize = 5;

/// Ids come from an operator-edited file, so problem messages cut them short rather than letting
/// one pasted paragraph swamp the log line.
const MAX_QUOTED_CHARS: usize = 40;

/// One ethical principle; `weight` lets an operator say how strongly it should count against the
/// others when they pull in different directions.
#[derive(Debug, Clone, PartialEq)]
pub struct Axiom {
    pub id: String,
    pub statement: String,
    pub weight: f64,
}

/// The outcome of loading: the axioms that could be used, where they came from, and everything
/// that was wrong, so the caller can both run and tell the operator what to fix.
#[derive(Debug, Clone, PartialEq)]
pub struct AxiomSet {
    pub axioms: Vec<Axiom>,
    /// The file path, or `"built-in"` for the embedded defaults; kept so problems can name it.
    pub source: String,
    /// Human-readable descriptions, one per problem, without the file name.
    pub problems: Vec<String>,
}

/// Loading never fails, because the kernel must come up even with a broken axioms file; what went
/// wrong is recorded in [`AxiomSet::problems`] for the caller to log.
pub fn load_axioms(data_dir: &Path) -> AxiomSet {
    let path = data_dir.join(FILE_NAME);
    let source = path.display().to_string();
    match fs::read_to_string(&path) {
        Ok(text) => parse_axioms(&text, source),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            parse_axioms(DEFAULT_AXIOMS, BUILT_IN_SOURCE.to_string())
        }
        Err(err) => {
            AxiomSet { axioms: Vec::new(), source, problems: vec![format!("cannot read the file: {err}")] }
        }
    }
}

impl AxiomSet {
    /// A single number the kernel can report and act on; it counts axioms rather than weights so
    /// that an operator cannot reach full alignment with one heavily weighted axiom.
    pub fn alignment(&self) -> f64 {
        (self.axioms.len() as f64 / REQUIRED_AXIOMS as f64).min(1.0)
    }

    /// One line naming the file and what is wrong with it, so an operator reading the log knows
    /// exactly which file to open and what to fix.
    pub fn problem_summary(&self) -> Option<String> {
        if self.problems.is_empty() {
            return None;
        }
        let mut line = format!(
            "{}: {}",
            self.source,
            self.problems.iter().take(MAX_LISTED_PROBLEMS).map(String::as_str).collect::<Vec<_>>().join("; ")
        );
        let unlisted = self.problems.len().saturating_sub(MAX_LISTED_PROBLEMS);
        if unlisted > 0 {
            line.push_str(&format!("; and {unlisted} more"));
        }
        Some(line)
    }
}

/// Shared by the file and the embedded defaults so both are held to exactly the same rules.
fn parse_axioms(text: &str, source: String) -> AxiomSet {
    let mut set = AxiomSet { axioms: Vec::new(), source, problems: Vec::new() };
    // Editors on Windows like to add a byte-order mark, which JSON parsers reject.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let root: Value = match serde_json::from_str(text) {
        Ok(root) => root,
        Err(err) => {
            set.problems.push(describe_json_error(&err));
            return set;
        }
    };

    let Some(object) = root.as_object() else {
        set.problems.push(format!("expected an object with an \"axioms\" list, found {}", kind_of(&root)));
        return set;
    };
    match object.get("version") {
        None => {}
        Some(version) if version.as_u64() == Some(1) => {}
        Some(version) => set.problems.push(format!(
            "unsupported \"version\" {} (expected 1); read the axioms anyway",
            short(&version.to_string())
        )),
    }
    let list = match object.get("axioms") {
        Some(Value::Array(list)) => list,
        Some(other) => {
            set.problems.push(format!(
                "expected an object with an \"axioms\" list, but \"axioms\" is {}",
                kind_of(other)
            ));
            return set;
        }
        None => {
            set.problems.push(
                "expected an object with an \"axioms\" list, but there is no \"axioms\" key".to_string(),
            );
            return set;
        }
    };
    if list.is_empty() {
        set.problems.push("the \"axioms\" list is empty".to_string());
    }

    // Ids of every axiom seen so far, valid or not, with its 1-based position: the id must be
    // unique within the file, and naming the first use tells the operator which two to reconcile.
    let mut first_use: HashMap<&str, usize> = HashMap::new();
    for (index, entry) in list.iter().enumerate() {
        let number = index + 1;
        match parse_axiom(entry, number, &mut first_use) {
            Ok(axiom) => set.axioms.push(axiom),
            Err(issues) => set.problems.push(format!("axiom #{number}: {}", issues.join(", "))),
        }
    }
    set
}

/// Collects every issue with one axiom, so the operator can fix it in one pass instead of
/// discovering the problems one restart at a time.
fn parse_axiom<'a>(
    entry: &'a Value,
    number: usize,
    first_use: &mut HashMap<&'a str, usize>,
) -> Result<Axiom, Vec<String>> {
    let Some(fields) = entry.as_object() else {
        return Err(vec![format!("expected an object, found {}", kind_of(entry))]);
    };
    let mut issues = Vec::new();

    let id = match fields.get("id") {
        None => {
            issues.push("missing \"id\"".to_string());
            None
        }
        Some(Value::String(id)) if id.is_empty() => {
            issues.push("empty \"id\"".to_string());
            None
        }
        Some(Value::String(id)) if !is_valid_id(id) => {
            issues.push(format!("id {} must contain only a-z, 0-9 and _", short_quoted(id)));
            None
        }
        Some(Value::String(id)) => {
            if let Some(first) = first_use.get(id.as_str()) {
                issues.push(format!("duplicate id {} (first used by axiom #{first})", short_quoted(id)));
            } else {
                first_use.insert(id, number);
            }
            Some(id)
        }
        Some(other) => {
            issues.push(format!("\"id\" must be a string, found {}", kind_of(other)));
            None
        }
    };

    let statement = match fields.get("statement") {
        None => {
            issues.push("missing \"statement\"".to_string());
            None
        }
        Some(Value::String(statement)) if statement.trim().is_empty() => {
            issues.push("empty \"statement\"".to_string());
            None
        }
        Some(Value::String(statement)) => Some(statement.trim()),
        Some(other) => {
            issues.push(format!("\"statement\" must be a string, found {}", kind_of(other)));
            None
        }
    };

    let weight = match fields.get("weight") {
        None => Some(1.0),
        Some(Value::Number(number)) => match number.as_f64() {
            Some(weight) if weight > 0.0 && weight <= 1.0 => Some(weight),
            _ => {
                issues.push(format!(
                    "\"weight\" must be greater than 0 and at most 1, found {}",
                    short(&number.to_string())
                ));
                None
            }
        },
        Some(other) => {
            issues.push(format!("\"weight\" must be a number, found {}", kind_of(other)));
            None
        }
    };

    match (id, statement, weight) {
        (Some(id), Some(statement), Some(weight)) if issues.is_empty() => {
            Ok(Axiom { id: id.clone(), statement: statement.to_string(), weight })
        }
        _ => Err(issues),
    }
}

/// Restricting ids keeps them safe to use as log fields, metric labels and file names.
fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// serde_json appends the position to its message; it is moved to the front so the operator sees
/// where to look before what went wrong.
fn describe_json_error(err: &serde_json::Error) -> String {
    let full = err.to_string();
    if err.line() == 0 {
        return format!("invalid JSON: {full}");
    }
    let position = format!(" at line {} column {}", err.line(), err.column());
    let message = full.strip_suffix(&position).unwrap_or(&full);
    format!("invalid JSON at line {} column {}: {message}", err.line(), err.column())
}

/// Names a JSON value's type the way an operator would describe it.
fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Quotes and escapes text from the file, so control characters cannot break the one-line summary.
fn short_quoted(text: &str) -> String {
    format!("{:?}", shorten(text))
}

fn short(text: &str) -> String {
    shorten(text).escape_debug().to_string()
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh, empty directory per test, so tests can run in parallel without seeing each
    /// other's files.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(label: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let unique = format!(
                "triune-conscience-{label}-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            let path = std::env::temp_dir().join(unique);
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).expect("create temp dir");
            TempDir(path)
        }

        fn with_file(label: &str, contents: &str) -> Self {
            let dir = Self::new(label);
            fs::write(dir.file(), contents).expect("write axioms file");
            dir
        }

        fn file(&self) -> PathBuf {
            self.0.join(FILE_NAME)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn axiom_json(id: &str) -> String {
        format!(r#"{{"id": "{id}", "statement": "Statement for {id}."}}"#)
    }

    fn file_with_axioms(count: usize) -> String {
        let axioms: Vec<String> = (0..count).map(|i| axiom_json(&format!("axiom_{i}"))).collect();
        format!(r#"{{"version": 1, "axioms": [{}]}}"#, axioms.join(","))
    }

    fn ids(set: &AxiomSet) -> Vec<&str> {
        set.axioms.iter().map(|a| a.id.as_str()).collect()
    }

    #[test]
    fn embedded_default_set_is_entirely_valid_and_complete() {
        let set = parse_axioms(DEFAULT_AXIOMS, BUILT_IN_SOURCE.to_string());
        assert_eq!(set.problems, Vec::<String>::new());
        assert!(set.axioms.len() >= 12, "only {} default axioms", set.axioms.len());
        assert_eq!(set.alignment(), 1.0);
        let total: usize =
            serde_json::from_str::<Value>(DEFAULT_AXIOMS).unwrap()["axioms"].as_array().unwrap().len();
        assert_eq!(set.axioms.len(), total, "every default axiom must be valid");
        assert!(ids(&set).contains(&"non_maleficence"));
    }

    #[test]
    fn default_set_loads_when_the_data_dir_has_no_axioms_file() {
        let dir = TempDir::new("no-file");
        let set = load_axioms(&dir.0);
        assert_eq!(set.source, "built-in");
        assert!(set.problems.is_empty(), "{:?}", set.problems);
        assert_eq!(set.problem_summary(), None);
        assert_eq!(set.axioms, parse_axioms(DEFAULT_AXIOMS, String::new()).axioms);
        assert_eq!(set.alignment(), 1.0);
    }

    #[test]
    fn default_set_loads_when_the_data_dir_itself_is_missing() {
        let dir = TempDir::new("missing-dir");
        let set = load_axioms(&dir.0.join("does-not-exist"));
        assert_eq!(set.source, "built-in");
        assert!(set.problems.is_empty());
        assert!(set.axioms.len() >= REQUIRED_AXIOMS);
    }

    #[test]
    fn valid_custom_file_replaces_the_defaults() {
        let dir = TempDir::with_file(
            "custom",
            r#"{
                "version": 1,
                "comment": "unknown keys are ignored",
                "axioms": [
                    {"id": "be_kind", "statement": "  Be kind.  ", "weight": 0.5, "note": "ignored"},
                    {"id": "tell_truth_2", "statement": "Tell the truth."}
                ]
            }"#,
        );
        let set = load_axioms(&dir.0);
        assert_eq!(set.source, dir.file().display().to_string());
        assert!(set.problems.is_empty(), "{:?}", set.problems);
        assert_eq!(
            set.axioms,
            vec![
                Axiom { id: "be_kind".into(), statement: "Be kind.".into(), weight: 0.5 },
                Axiom { id: "tell_truth_2".into(), statement: "Tell the truth.".into(), weight: 1.0 },
            ]
        );
        assert!((set.alignment() - 0.2).abs() < 1e-12);
    }

    #[test]
    fn file_without_version_is_accepted() {
        let dir = TempDir::with_file("no-version", &format!(r#"{{"axioms": [{}]}}"#, axiom_json("a")));
        let set = load_axioms(&dir.0);
        assert!(set.problems.is_empty(), "{:?}", set.problems);
        assert_eq!(ids(&set), ["a"]);
    }

    #[test]
    fn invalid_json_yields_no_axioms_and_the_summary_names_the_file() {
        let dir = TempDir::with_file("bad-json", "{\n  \"version\": 1,\n  \"axioms\": [\n}\n");
        let set = load_axioms(&dir.0);
        assert!(set.axioms.is_empty());
        assert_eq!(set.alignment(), 0.0);
        assert_eq!(set.problems.len(), 1);
        assert_eq!(set.problems, vec!["invalid JSON at line 4 column 1: expected value".to_string()]);
        let summary = set.problem_summary().expect("a summary");
        let path = dir.file().display().to_string();
        assert!(summary.starts_with(&format!("{path}: invalid JSON at line 4")), "{summary}");
        assert!(!summary.contains('\n'));
    }

    #[test]
    fn empty_file_is_reported_as_invalid_json() {
        let dir = TempDir::with_file("empty", "");
        let set = load_axioms(&dir.0);
        assert!(set.axioms.is_empty());
        assert_eq!(set.problems.len(), 1);
        assert!(set.problems[0].starts_with("invalid JSON"), "{}", set.problems[0]);
    }

    #[test]
    fn byte_order_mark_does_not_break_parsing() {
        let dir = TempDir::with_file("bom", &format!("\u{feff}{}", file_with_axioms(2)));
        let set = load_axioms(&dir.0);
        assert!(set.problems.is_empty(), "{:?}", set.problems);
        assert_eq!(set.axioms.len(), 2);
    }

    #[test]
    fn wrong_top_level_shape_is_reported() {
        for (contents, expected) in [
            (
                r#"[{"id": "a", "statement": "A."}]"#,
                "expected an object with an \"axioms\" list, found a list",
            ),
            (
                r#"{"version": 1}"#,
                "expected an object with an \"axioms\" list, but there is no \"axioms\" key",
            ),
            (
                r#"{"axioms": {"id": "a"}}"#,
                "expected an object with an \"axioms\" list, but \"axioms\" is an object",
            ),
            ("null", "expected an object with an \"axioms\" list, found null"),
        ] {
            let dir = TempDir::with_file("shape", contents);
            let set = load_axioms(&dir.0);
            assert!(set.axioms.is_empty(), "{contents}");
            assert_eq!(set.problems, vec![expected.to_string()], "{contents}");
        }
    }

    #[test]
    fn unreadable_file_is_reported_not_replaced_by_defaults() {
        let dir = TempDir::new("unreadable");
        // A directory where the file should be: exists, but cannot be read as text.
        fs::create_dir(dir.file()).unwrap();
        let set = load_axioms(&dir.0);
        assert!(set.axioms.is_empty());
        assert_eq!(set.source, dir.file().display().to_string());
        assert_eq!(set.problems.len(), 1);
        assert!(set.problems[0].starts_with("cannot read the file: "), "{}", set.problems[0]);
        assert!(set.problem_summary().unwrap().starts_with(&set.source));
    }

    #[test]
    fn non_utf8_file_is_reported() {
        let dir = TempDir::new("non-utf8");
        fs::write(dir.file(), [0x7b, 0xff, 0xfe, 0x7d]).unwrap();
        let set = load_axioms(&dir.0);
        assert!(set.axioms.is_empty());
        assert_eq!(set.problems.len(), 1);
        assert!(set.problems[0].starts_with("cannot read the file: "), "{}", set.problems[0]);
    }

    #[test]
    fn malformed_axioms_are_skipped_and_only_valid_ones_count() {
        let dir = TempDir::with_file(
            "mixed",
            r#"{"version": 1, "axioms": [
                {"id": "good_one", "statement": "Fine."},
                {"id": "no_statement"},
                {"statement": "No id."},
                {"id": "Bad Id", "statement": "Bad id."},
                {"id": "", "statement": "Empty id."},
                {"id": 7, "statement": "Numeric id."},
                {"id": "blank", "statement": "   "},
                {"id": "zero_weight", "statement": "W.", "weight": 0},
                {"id": "heavy", "statement": "W.", "weight": 1.5},
                {"id": "negative", "statement": "W.", "weight": -0.1},
                {"id": "text_weight", "statement": "W.", "weight": "high"},
                "just a string",
                {"id": "good_two", "statement": "Also fine.", "weight": 1},
                {"id": "tiny", "statement": "Small but positive.", "weight": 0.001}
            ]}"#,
        );
        let set = load_axioms(&dir.0);
        assert_eq!(ids(&set), ["good_one", "good_two", "tiny"]);
        assert_eq!(set.axioms[1].weight, 1.0);
        assert!((set.alignment() - 0.3).abs() < 1e-12);
        assert_eq!(
            set.problems,
            vec![
                r#"axiom #2: missing "statement""#,
                r#"axiom #3: missing "id""#,
                r#"axiom #4: id "Bad Id" must contain only a-z, 0-9 and _"#,
                r#"axiom #5: empty "id""#,
                r#"axiom #6: "id" must be a string, found a number"#,
                r#"axiom #7: empty "statement""#,
                r#"axiom #8: "weight" must be greater than 0 and at most 1, found 0"#,
                r#"axiom #9: "weight" must be greater than 0 and at most 1, found 1.5"#,
                r#"axiom #10: "weight" must be greater than 0 and at most 1, found -0.1"#,
                r#"axiom #11: "weight" must be a number, found a string"#,
                r#"axiom #12: expected an object, found a string"#,
            ]
        );
    }

    #[test]
    fn every_problem_with_one_axiom_is_reported_together() {
        let dir = TempDir::with_file("multi", r#"{"axioms": [{"id": "X", "weight": 2}]}"#);
        let set = load_axioms(&dir.0);
        assert!(set.axioms.is_empty());
        assert_eq!(
            set.problems,
            vec![
                r#"axiom #1: id "X" must contain only a-z, 0-9 and _, missing "statement", "weight" must be greater than 0 and at most 1, found 2"#
            ]
        );
    }

    #[test]
    fn malformed_file_keeps_valid_axioms_and_names_the_file() {
        let dir = TempDir::with_file(
            "keeps-valid",
            r#"{"axioms": [{"id": "honesty", "statement": "Do not lie."}, {"id": "harm"}]}"#,
        );
        let set = load_axioms(&dir.0);
        assert_eq!(ids(&set), ["honesty"]);
        assert_eq!(
            set.problem_summary().unwrap(),
            format!(r#"{}: axiom #2: missing "statement""#, dir.file().display())
        );
    }

    #[test]
    fn duplicate_ids_keep_the_first_and_report_the_rest() {
        let dir = TempDir::with_file(
            "dupes",
            r#"{"axioms": [
                {"id": "honesty", "statement": "First."},
                {"id": "privacy", "statement": "Private."},
                {"id": "honesty", "statement": "Second."},
                {"id": "honesty", "statement": "Third."}
            ]}"#,
        );
        let set = load_axioms(&dir.0);
        assert_eq!(ids(&set), ["honesty", "privacy"]);
        assert_eq!(set.axioms[0].statement, "First.");
        assert_eq!(
            set.problems,
            vec![
                r#"axiom #3: duplicate id "honesty" (first used by axiom #1)"#,
                r#"axiom #4: duplicate id "honesty" (first used by axiom #1)"#,
            ]
        );
    }

    #[test]
    fn an_id_is_taken_even_by_an_invalid_axiom() {
        let dir = TempDir::with_file(
            "dupe-of-invalid",
            r#"{"axioms": [{"id": "honesty"}, {"id": "honesty", "statement": "Second."}]}"#,
        );
        let set = load_axioms(&dir.0);
        assert!(set.axioms.is_empty());
        assert_eq!(set.problems.len(), 2);
        assert_eq!(set.problems[1], r#"axiom #2: duplicate id "honesty" (first used by axiom #1)"#);
    }

    #[test]
    fn alignment_grows_with_valid_axioms_and_caps_at_one() {
        for (count, expected) in [(0, 0.0), (1, 0.1), (5, 0.5), (9, 0.9), (10, 1.0), (11, 1.0), (25, 1.0)] {
            let dir = TempDir::with_file("alignment", &file_with_axioms(count));
            let set = load_axioms(&dir.0);
            assert_eq!(set.axioms.len(), count);
            assert!((set.alignment() - expected).abs() < 1e-12, "{count} axioms: {}", set.alignment());
        }
    }

    #[test]
    fn empty_axioms_list_is_reported() {
        let dir = TempDir::with_file("empty-list", r#"{"version": 1, "axioms": []}"#);
        let set = load_axioms(&dir.0);
        assert!(set.axioms.is_empty());
        assert_eq!(set.problems, vec![r#"the "axioms" list is empty"#.to_string()]);
    }

    #[test]
    fn unsupported_version_is_reported_but_axioms_are_still_read() {
        let dir =
            TempDir::with_file("version-2", &format!(r#"{{"version": 2, "axioms": [{}]}}"#, axiom_json("a")));
        let set = load_axioms(&dir.0);
        assert_eq!(ids(&set), ["a"]);
        assert_eq!(
            set.problems,
            vec![r#"unsupported "version" 2 (expected 1); read the axioms anyway"#.to_string()]
        );
    }

    #[test]
    fn summary_lists_five_problems_then_counts_the_rest() {
        let set = AxiomSet {
            axioms: Vec::new(),
            source: "/data/axioms.json".into(),
            problems: (1..=8).map(|i| format!("p{i}")).collect(),
        };
        assert_eq!(set.problem_summary().unwrap(), "/data/axioms.json: p1; p2; p3; p4; p5; and 3 more");

        let exactly_five = AxiomSet { problems: (1..=5).map(|i| format!("p{i}")).collect(), ..set };
        assert_eq!(exactly_five.problem_summary().unwrap(), "/data/axioms.json: p1; p2; p3; p4; p5");
    }

    #[test]
    fn summary_stays_on_one_line_with_hostile_ids() {
        let dir = TempDir::with_file(
            "hostile",
            r#"{"axioms": [{"id": "line\nbreak and a very long id that goes on and on and on", "statement": "S."}]}"#,
        );
        let set = load_axioms(&dir.0);
        let summary = set.problem_summary().unwrap();
        assert!(!summary.contains('\n'), "{summary}");
        assert!(summary.contains(r#"id "line\nbreak"#), "{summary}");
        assert!(summary.contains('…'), "{summary}");
    }
}
