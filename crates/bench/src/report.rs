//! Figures: samples, the table and the JSON file.

use std::fmt::Write as _;

/// Repeated measurements of one figure for one VMM.
#[derive(Debug, Clone, Default)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    pub fn push(&mut self, v: f64) {
        self.0.push(v);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    pub fn median(&self) -> Option<f64> {
        let v = self.sorted();
        let n = v.len();
        match n {
            0 => None,
            _ if n % 2 == 1 => Some(v[n / 2]),
            _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    }

    pub fn min(&self) -> Option<f64> {
        self.sorted().first().copied()
    }

    pub fn max(&self) -> Option<f64> {
        self.sorted().last().copied()
    }
}

/// How a figure is judged against its target.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// vmm median ≤ this absolute value.
    AtMost(f64),
    /// vmm median ≥ this absolute value.
    AtLeast(f64),
    /// vmm median ≤ factor × QEMU median.
    RatioAtMost(f64),
    /// vmm median ≥ factor × QEMU median (throughput).
    RatioAtLeast(f64),
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Figure {
    pub key: String,
    pub title: String,
    pub unit: &'static str,
    pub vmm: Samples,
    pub qemu: Option<Samples>,
    pub targets: Vec<Target>,
    pub note: String,
    /// The same measurement without a VM (e.g. fio on the host), where one applies.
    pub host: Option<Samples>,
}

impl Figure {
    pub fn new(key: &str, title: &str, unit: &'static str) -> Figure {
        Figure {
            key: key.to_string(),
            title: title.to_string(),
            unit,
            vmm: Samples::default(),
            qemu: None,
            targets: Vec::new(),
            note: String::new(),
            host: None,
        }
    }

    pub fn ratio(&self) -> Option<f64> {
        let v = self.vmm.median()?;
        let q = self.qemu.as_ref()?.median()?;
        (q != 0.0).then(|| v / q)
    }

    /// Whether every target holds; `None` when a target cannot be judged (no data).
    pub fn met(&self) -> Option<bool> {
        if self.targets.is_empty() {
            return None;
        }
        let v = self.vmm.median()?;
        let mut all = true;
        for t in &self.targets {
            let ok = match *t {
                Target::AtMost(x) => v <= x,
                Target::AtLeast(x) => v >= x,
                Target::RatioAtMost(f) => self.ratio()? <= f,
                Target::RatioAtLeast(f) => self.ratio()? >= f,
            };
            all &= ok;
        }
        Some(all)
    }

    pub fn target_text(&self) -> String {
        let parts: Vec<String> = self
            .targets
            .iter()
            .map(|t| match *t {
                Target::AtMost(x) => format!("≤ {}", num(x)),
                Target::AtLeast(x) => format!("≥ {}", num(x)),
                Target::RatioAtMost(f) => format!("≤ {f}× qemu"),
                Target::RatioAtLeast(f) => format!("≥ {f}× qemu"),
            })
            .collect();
        parts.join(", ")
    }
}

fn num(x: f64) -> String {
    if x.abs() >= 100.0 || x.fract() == 0.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn cell(s: &Samples) -> String {
    match (s.median(), s.min(), s.max()) {
        (Some(m), Some(lo), Some(hi)) if s.0.len() > 1 => {
            format!("{} [{}–{}] n={}", num(m), num(lo), num(hi), s.0.len())
        }
        (Some(m), _, _) => num(m),
        _ => "—".to_string(),
    }
}

/// The table, one figure per row.
pub fn table(figures: &[Figure]) -> String {
    let rows: Vec<[String; 6]> = figures
        .iter()
        .map(|f| {
            [
                format!("{} ({})", f.title, f.unit),
                cell(&f.vmm),
                f.qemu.as_ref().map_or("n/a".to_string(), cell),
                f.ratio().map_or("—".to_string(), |r| format!("{r:.2}")),
                f.target_text(),
                match f.met() {
                    Some(true) => "yes".to_string(),
                    Some(false) => "NO".to_string(),
                    None => "—".to_string(),
                },
            ]
        })
        .collect();
    let head = [
        "figure",
        "vmm median [min–max]",
        "qemu median [min–max]",
        "vmm/qemu",
        "target",
        "met",
    ];
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            let pad = w - c.chars().count();
            if i == 0 {
                let _ = write!(l, "{c}{}", " ".repeat(pad));
            } else {
                let _ = write!(l, "  {}{c}", " ".repeat(pad));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&head.map(String::from));
    line(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>());
    for r in &rows {
        line(r);
    }
    for f in figures
        .iter()
        .filter(|f| !f.note.is_empty() || f.host.is_some())
    {
        let host = f
            .host
            .as_ref()
            .map_or(String::new(), |h| format!("host {} {}", cell(h), f.unit));
        let sep = if host.is_empty() || f.note.is_empty() {
            ""
        } else {
            "; "
        };
        let _ = writeln!(out, "  {}: {host}{sep}{}", f.key, f.note);
    }
    out
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_num(x: Option<f64>) -> String {
    match x {
        Some(x) if x.is_finite() => format!("{x}"),
        _ => "null".to_string(),
    }
}

fn json_samples(s: &Samples) -> String {
    let all: Vec<String> = s.0.iter().map(|x| json_num(Some(*x))).collect();
    format!(
        "{{\"median\": {}, \"min\": {}, \"max\": {}, \"samples\": [{}]}}",
        json_num(s.median()),
        json_num(s.min()),
        json_num(s.max()),
        all.join(", ")
    )
}

/// The whole run as JSON: `meta` (key → string) and one object per figure.
pub fn json(meta: &[(&str, String)], figures: &[Figure]) -> String {
    let mut out = String::from("{\n  \"meta\": {");
    let m: Vec<String> = meta
        .iter()
        .map(|(k, v)| format!("{}: {}", json_str(k), json_str(v)))
        .collect();
    out.push_str(&m.join(", "));
    out.push_str("},\n  \"figures\": [\n");
    let f: Vec<String> = figures
        .iter()
        .map(|f| {
            format!(
                "    {{\"key\": {}, \"title\": {}, \"unit\": {}, \"vmm\": {}, \"qemu\": {}, \"host\": {}, \"ratio\": {}, \"target\": {}, \"met\": {}, \"note\": {}}}",
                json_str(&f.key),
                json_str(&f.title),
                json_str(f.unit),
                json_samples(&f.vmm),
                f.qemu.as_ref().map_or("null".to_string(), json_samples),
                f.host.as_ref().map_or("null".to_string(), json_samples),
                json_num(f.ratio()),
                json_str(&f.target_text()),
                f.met().map_or("null".to_string(), |b| b.to_string()),
                json_str(&f.note)
            )
        })
        .collect();
    out.push_str(&f.join(",\n"));
    out.push_str("\n  ]\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max() {
        let s = Samples(vec![3.0, 1.0, 2.0, 10.0]);
        assert_eq!(s.median(), Some(2.5));
        assert_eq!(s.min(), Some(1.0));
        assert_eq!(s.max(), Some(10.0));
        assert_eq!(Samples(vec![5.0, 1.0, 3.0]).median(), Some(3.0));
        assert_eq!(Samples::default().median(), None);
    }

    #[test]
    fn targets_and_ratio() {
        let mut f = Figure::new("x", "x", "ms");
        f.vmm = Samples(vec![4.0]);
        f.qemu = Some(Samples(vec![10.0]));
        f.targets = vec![Target::AtMost(5.0), Target::RatioAtMost(0.5)];
        assert_eq!(f.ratio(), Some(0.4));
        assert_eq!(f.met(), Some(true));
        f.targets.push(Target::AtLeast(100.0));
        assert_eq!(f.met(), Some(false));
        f.qemu = None;
        f.targets = vec![Target::RatioAtMost(1.0)];
        assert_eq!(f.met(), None);
    }

    #[test]
    fn json_escapes_and_nulls() {
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
        let f = Figure::new("k", "t", "ms");
        let j = json(&[("load", "1.0".to_string())], &[f]);
        assert!(j.contains("\"median\": null"));
        assert!(j.contains("\"qemu\": null"));
    }
}
