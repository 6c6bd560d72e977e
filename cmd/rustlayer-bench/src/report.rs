//! The tables: a summary (rustlayer against each built-in snapshotter, medians over
//! rounds, and their ratio) and the details (every figure, every target).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::results::Record;
use crate::stats::median;

const RUSTLAYER: &str = "rustlayer";
const BUILT_INS: [&str; 3] = ["overlayfs", "native", "devmapper"];
/// The proxy that does no I/O (see `floor.rs`), measured through containerd.
pub const FLOOR: &str = "floor";
/// Column order of the details table; other targets follow in the order seen.
const KNOWN_TARGETS: [&str; 6] = [
    "rustlayer",
    "rustlayer-direct",
    "overlayfs",
    "native",
    FLOOR,
    "host",
];

/// All records of one (row, metric, target).
#[derive(Default)]
struct Cell {
    values: Vec<f64>,
    notes: Vec<String>,
    unit: String,
}

impl Cell {
    fn median(&self) -> Option<f64> {
        (!self.values.is_empty()).then(|| median(&self.values))
    }

    fn summary(&self) -> String {
        match self.median() {
            Some(m) => format_value(m, &self.unit),
            None => self.note(),
        }
    }

    fn detail(&self) -> String {
        let Some(m) = self.median() else {
            return self.note();
        };
        let mut text = format_value(m, &self.unit);
        if self.values.len() > 1 {
            let lo = self.values.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = self
                .values
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max);
            let _ = write!(
                text,
                " ({}–{}, n={})",
                format_number(lo),
                format_number(hi),
                self.values.len()
            );
        }
        if !self.notes.is_empty() {
            let _ = write!(text, "; also: {}", self.note());
        }
        text
    }

    fn note(&self) -> String {
        let mut distinct: Vec<&str> = Vec::new();
        for n in &self.notes {
            if !distinct.contains(&n.as_str()) {
                distinct.push(n);
            }
        }
        if distinct.is_empty() {
            "—".into()
        } else {
            distinct.join("; ").replace('|', "/")
        }
    }
}

struct Metric {
    main: bool,
    cells: BTreeMap<String, Cell>,
}

pub struct Report {
    /// row -> metrics in the order first seen.
    rows: BTreeMap<String, Vec<(String, Metric)>>,
    targets: Vec<String>,
}

impl Report {
    pub fn new(records: &[Record]) -> Report {
        let mut rows: BTreeMap<String, Vec<(String, Metric)>> = BTreeMap::new();
        let mut targets: Vec<String> = KNOWN_TARGETS.iter().map(|t| t.to_string()).collect();
        for r in records {
            if !targets.contains(&r.target) {
                targets.push(r.target.clone());
            }
            let metrics = rows.entry(r.row.clone()).or_default();
            let at = match metrics.iter().position(|(m, _)| *m == r.metric) {
                Some(at) => at,
                None => {
                    metrics.push((
                        r.metric.clone(),
                        Metric {
                            main: false,
                            cells: BTreeMap::new(),
                        },
                    ));
                    metrics.len() - 1
                }
            };
            let metric = &mut metrics[at].1;
            metric.main |= r.main;
            let cell = metric.cells.entry(r.target.clone()).or_default();
            if !r.unit.is_empty() {
                cell.unit = r.unit.clone();
            }
            match (r.value, &r.note) {
                (Some(v), _) => cell.values.push(v),
                (None, Some(note)) => cell.notes.push(note.clone()),
                (None, None) => {}
            }
        }
        let used: Vec<String> = targets
            .into_iter()
            .filter(|t| {
                rows.values()
                    .flatten()
                    .any(|(_, metric)| metric.cells.contains_key(t))
            })
            .collect();
        Report {
            rows,
            targets: used,
        }
    }

    /// row | metric | rustlayer | built-in | ratio (rustlayer / built-in).
    pub fn summary(&self) -> String {
        let mut out = String::from(
            "| row | metric | rustlayer | built-in | ratio (rustlayer / built-in) |\n|---|---|---|---|---|\n",
        );
        for (row, metrics) in &self.rows {
            for (name, metric) in metrics.iter().filter(|(_, m)| m.main) {
                let ours = metric.cells.get(RUSTLAYER);
                let ours_text = ours.map_or("—".into(), Cell::summary);
                let mut theirs: Vec<(&str, &Cell)> = BUILT_INS
                    .iter()
                    .filter_map(|b| metric.cells.get(*b).map(|c| (*b, c)))
                    .collect();
                if theirs.is_empty() {
                    let _ = writeln!(out, "| {row} | {name} | {ours_text} | — | — |");
                    continue;
                }
                for (builtin, cell) in theirs.drain(..) {
                    let ratio = match (ours.and_then(Cell::median), cell.median()) {
                        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                        _ => "—".into(),
                    };
                    let _ = writeln!(
                        out,
                        "| {row} | {name} | {ours_text} | {builtin}: {} | {ratio} |",
                        cell.summary()
                    );
                }
            }
        }
        out
    }

    /// Where a metric was also taken on the proxy floor: how much of it the proxy
    /// path alone costs, what rustlayer adds on top of it, and how much a proxy may
    /// add before it is slower than the built-in overlayfs. None without the floor.
    pub fn proxy_floor(&self) -> Option<String> {
        let mut out = String::from(
            "| row | metric | proxy floor | floor / overlayfs | rustlayer's own work (rustlayer − floor) | left for a proxy's work (overlayfs − floor) |\n|---|---|---|---|---|---|\n",
        );
        let mut any = false;
        for (row, metrics) in &self.rows {
            for (name, metric) in metrics.iter().filter(|(_, m)| m.main) {
                let median_of = |t: &str| metric.cells.get(t).and_then(Cell::median);
                let Some(floor) = median_of(FLOOR) else {
                    continue;
                };
                let unit = metric.cells[FLOOR].unit.as_str();
                let ratio = median_of("overlayfs")
                    .filter(|o| *o > 0.0)
                    .map_or("—".into(), |o| format!("{:.2}", floor / o));
                let over =
                    |t: &str| median_of(t).map_or("—".into(), |v| format_value(v - floor, unit));
                let _ = writeln!(
                    out,
                    "| {row} | {name} | {} | {ratio} | {} | {} |",
                    format_value(floor, unit),
                    over(RUSTLAYER),
                    over("overlayfs"),
                );
                any = true;
            }
        }
        any.then_some(out)
    }

    /// Every figure: the median over rounds, with the range when there were several.
    pub fn details(&self) -> String {
        let mut out = String::from("| row | metric |");
        for t in &self.targets {
            let _ = write!(out, " {t} |");
        }
        out.push_str("\n|---|---|");
        for _ in &self.targets {
            out.push_str("---|");
        }
        out.push('\n');
        for (row, metrics) in &self.rows {
            for (name, metric) in metrics {
                let _ = write!(out, "| {row} | {name} |");
                for t in &self.targets {
                    let cell = metric.cells.get(t).map_or(String::new(), Cell::detail);
                    let _ = write!(out, " {cell} |");
                }
                out.push('\n');
            }
        }
        out
    }
}

pub fn format_value(v: f64, unit: &str) -> String {
    if unit.is_empty() {
        format_number(v)
    } else {
        format!("{} {unit}", format_number(v))
    }
}

/// Three significant figures, no exponent.
fn format_number(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(metric: &str, target: &str, value: Option<f64>, note: Option<&str>) -> Record {
        Record {
            row: "1 r".into(),
            metric: metric.into(),
            target: target.into(),
            unit: "ms".into(),
            value,
            note: note.map(str::to_owned),
            round: 0,
            main: true,
        }
    }

    #[test]
    fn ratio_of_medians_per_built_in() {
        let records = vec![
            rec("m", "rustlayer", Some(2.0), None),
            rec("m", "rustlayer", Some(4.0), None),
            rec("m", "rustlayer", Some(3.0), None),
            rec("m", "overlayfs", Some(1.5), None),
            rec("m", "native", Some(3.0), None),
            rec("x", "rustlayer", None, Some("skipped: not built")),
        ];
        let summary = Report::new(&records).summary();
        assert!(
            summary.contains("| 1 r | m | 3.00 ms | overlayfs: 1.50 ms | 2.00 |"),
            "{summary}"
        );
        assert!(
            summary.contains("| 1 r | m | 3.00 ms | native: 3.00 ms | 1.00 |"),
            "{summary}"
        );
        assert!(
            summary.contains("| 1 r | x | skipped: not built | — | — |"),
            "{summary}"
        );
        let details = Report::new(&records).details();
        assert!(details.contains("3.00 ms (2.00–4.00, n=3)"), "{details}");
        assert!(Report::new(&records).proxy_floor().is_none());
    }

    #[test]
    fn the_floor_splits_the_hop_from_the_work() {
        let records = vec![
            rec("cycle", "rustlayer", Some(9.5), None),
            rec("cycle", "overlayfs", Some(8.0), None),
            rec("cycle", FLOOR, Some(6.0), None),
            rec("cycle", FLOOR, Some(7.0), None),
            rec("cycle", FLOOR, Some(6.5), None),
        ];
        let report = Report::new(&records);
        let floor = report.proxy_floor().expect("a floor table");
        assert!(
            floor.contains("| 1 r | cycle | 6.50 ms | 0.81 | 3.00 ms | 1.50 ms |"),
            "{floor}"
        );
        assert!(
            !report.summary().contains("floor"),
            "the floor is no built-in: {}",
            report.summary()
        );
    }
}
