//! Results are JSON lines, one figure each, appended by every step of a run (the
//! Rust rows and the shell-timed ones alike); `report` reads them back.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// "1 snapshot cycle", … : the report sorts rows by this.
    pub row: String,
    pub metric: String,
    /// Snapshotter name, "rustlayer-direct", or what else the figure is about.
    pub target: String,
    pub unit: String,
    /// None when the step failed or was skipped; `note` says why.
    #[serde(default)]
    pub value: Option<f64>,
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub round: u32,
    /// Whether the summary table shows it (the details table shows everything).
    #[serde(default)]
    pub main: bool,
}

pub struct Sink<'a> {
    path: Option<&'a Path>,
}

impl<'a> Sink<'a> {
    pub fn new(path: Option<&'a Path>) -> Sink<'a> {
        Sink { path }
    }

    pub fn put(&self, record: Record) -> Result<()> {
        let shown = match (&record.value, &record.note) {
            (Some(v), _) => format!("{v:.3} {}", record.unit),
            (None, Some(note)) => note.clone(),
            (None, None) => "-".into(),
        };
        eprintln!(
            "  {:<18} {:<48} {:<17} {}",
            record.row, record.metric, record.target, shown
        );
        let Some(path) = self.path else {
            return Ok(());
        };
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("open {}", path.display()))?;
        let mut line = serde_json::to_string(&record)?;
        line.push('\n');
        file.write_all(line.as_bytes())
            .with_context(|| format!("write {}", path.display()))?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn value(
        &self,
        row: &str,
        metric: &str,
        target: &str,
        unit: &str,
        value: f64,
        round: u32,
        main: bool,
    ) -> Result<()> {
        self.put(Record {
            row: row.into(),
            metric: metric.into(),
            target: target.into(),
            unit: unit.into(),
            value: Some(value),
            note: None,
            round,
            main,
        })
    }

    pub fn note(
        &self,
        row: &str,
        metric: &str,
        target: &str,
        note: &str,
        round: u32,
        main: bool,
    ) -> Result<()> {
        self.put(Record {
            row: row.into(),
            metric: metric.into(),
            target: target.into(),
            unit: String::new(),
            value: None,
            note: Some(note.into()),
            round,
            main,
        })
    }
}

pub fn load(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(n, line)| {
            serde_json::from_str(line).with_context(|| format!("{}:{}", path.display(), n + 1))
        })
        .collect()
}
