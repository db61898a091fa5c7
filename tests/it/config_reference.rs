//! `.env.example` and docs/configuration.md describe the settings that
//! `ServeArgs` (src/config/args.rs) and the simulator's `SimArgs` declare. These tests fail
//! when they drift apart: a setting missing from either, one described
//! that the binary does not know, a flag or a default that disagrees.

use std::collections::{BTreeMap, BTreeSet};

use clap::{Args, Command};
use opscore::config::ServeArgs;
use opscore::sim::SimArgs;

/// A setting as clap declares it.
#[derive(Debug, Clone)]
struct Declared {
    flag: String,
    default: Option<String>,
}

/// The settings (by variable) of a command's arguments.
fn declared(cmd: Command) -> BTreeMap<String, Declared> {
    cmd.get_arguments()
        .filter_map(|a| {
            let env = a.get_env()?.to_string_lossy().into_owned();
            let declared = Declared {
                flag: format!("--{}", a.get_long()?),
                default: a
                    .get_default_values()
                    .first()
                    .map(|d| d.to_string_lossy().into_owned()),
            };
            Some((env, declared))
        })
        .collect()
}

fn serve() -> BTreeMap<String, Declared> {
    declared(ServeArgs::augment_args(Command::new("serve")))
}

fn simulate() -> BTreeMap<String, Declared> {
    declared(SimArgs::augment_args(Command::new("simulate")))
}

fn read(path: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A row of a settings table in docs/configuration.md.
#[derive(Debug)]
struct Row {
    flag: String,
    /// The default column, as written.
    default: String,
}

/// The settings tables of docs/configuration.md, in order: each maps a
/// variable to its row.
fn doc_tables() -> Vec<BTreeMap<String, Row>> {
    let text = read("docs/configuration.md");
    let mut tables = Vec::new();
    let mut current: Option<BTreeMap<String, Row>> = None;
    for line in text.lines() {
        if line.starts_with("| Variable | Flag | Default |") {
            current = Some(BTreeMap::new());
            continue;
        }
        let Some(table) = current.as_mut() else {
            continue;
        };
        if !line.starts_with('|') {
            tables.extend(current.take());
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.get(1).is_some_and(|c| c.starts_with("---")) {
            continue;
        }
        let (Some(var), Some(flag), Some(default)) = (cells.get(1), cells.get(2), cells.get(3))
        else {
            panic!("docs/configuration.md: a row without four cells: {line}");
        };
        let row = Row {
            flag: flag.trim_matches('`').to_owned(),
            default: (*default).to_owned(),
        };
        let var = var.trim_matches('`').to_owned();
        assert!(
            table.insert(var.clone(), row).is_none(),
            "docs/configuration.md: {var} is described twice in one table"
        );
    }
    tables.extend(current);
    tables
}

/// The first `code` span of a documented default, if it starts with one
/// (`` `300` ``, `` `./workflows` (…) ``); "unset", "none" and the like
/// have none.
fn documented_value(default: &str) -> Option<&str> {
    default.strip_prefix('`')?.split('`').next()
}

/// One table of the docs against the declared settings.
fn check_table(name: &str, table: &BTreeMap<String, Row>, settings: &BTreeMap<String, Declared>) {
    let undocumented: Vec<&String> = settings
        .keys()
        .filter(|v| !table.contains_key(*v))
        .collect();
    let unknown: Vec<&String> = table
        .keys()
        .filter(|v| !settings.contains_key(*v))
        .collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "docs/configuration.md's {name} table leaves out {undocumented:?} and describes \
         {unknown:?}, which `opscore {name}` does not know"
    );
    for (var, row) in table {
        let declared = &settings[var];
        assert_eq!(
            row.flag, declared.flag,
            "{var}: flag in docs/configuration.md"
        );
        if let Some(default) = &declared.default {
            assert_eq!(
                documented_value(&row.default),
                Some(default.as_str()),
                "{var}: docs/configuration.md's default is not `{default}`"
            );
        }
    }
}

#[test]
fn the_configuration_reference_describes_every_setting() {
    let tables = doc_tables();
    assert_eq!(
        tables.len(),
        2,
        "docs/configuration.md: serve and simulate tables"
    );
    check_table("serve", &tables[0], &serve());
    check_table("simulate", &tables[1], &simulate());
}

#[test]
fn env_example_describes_every_setting_with_its_default() {
    let text = read(".env.example");
    let mut settings = serve();
    // Every setting of the service and of the simulator's own must be
    // there; the client's connection settings (OPSCORE_URL,
    // OPSCORE_CLIENT_KEY, ..., shared by every client command and described
    // in docs/cli.md) may be.
    let mut required: BTreeSet<String> = settings.keys().cloned().collect();
    required.extend(simulate().into_keys().filter(|v| v.starts_with("SIM_")));
    // A setting of both commands (the webhook secret) is described once,
    // with the service's.
    for (var, declared) in simulate() {
        settings.entry(var).or_insert(declared);
    }
    let docs: BTreeMap<String, Row> = doc_tables().into_iter().flatten().collect();
    let mut seen = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        // `VAR=value` or `# VAR=value`; prose never starts with a variable
        // name and an equals sign.
        let assignment = line.strip_prefix("# ").unwrap_or(line);
        let Some((var, value)) = assignment.split_once('=') else {
            continue;
        };
        if var.is_empty() || !var.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
            continue;
        }
        let at = format!(".env.example line {}: {var}", n + 1);
        let declared = settings
            .get(var)
            .unwrap_or_else(|| panic!("{at} is not a setting of opscore serve or simulate"));
        seen.insert(var.to_owned());
        // A commented-out line shows the default; a line that is not
        // commented out is one to fill in (the secrets).
        if !line.starts_with('#') {
            assert_eq!(value, "", "{at}: a value to fill in is left empty");
            continue;
        }
        let expected = match &declared.default {
            Some(default) => default.as_str(),
            // A default the code works out (sqlite://<data dir>/…) is shown
            // as the docs show it, when it can be written as a value.
            None => docs
                .get(var)
                .and_then(|row| documented_value(&row.default))
                .filter(|v| !v.contains('<'))
                .unwrap_or(""),
        };
        assert_eq!(
            value, expected,
            "{at}: the commented-out line shows the default"
        );
    }
    let missing: Vec<&String> = required.iter().filter(|v| !seen.contains(*v)).collect();
    assert!(
        missing.is_empty(),
        ".env.example does not describe {missing:?}"
    );
}

#[test]
fn every_setting_is_one_variable_and_one_flag() {
    let cmd = ServeArgs::augment_args(Command::new("serve"));
    let mut vars = BTreeSet::new();
    for arg in cmd.get_arguments() {
        let env = arg
            .get_env()
            .unwrap_or_else(|| panic!("{:?} has no variable", arg.get_id()));
        assert!(vars.insert(env.to_owned()), "{env:?} is declared twice");
        assert!(arg.get_long().is_some(), "{env:?} has no flag");
    }
}
