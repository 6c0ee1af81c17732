//! Medians, quartiles and percentiles of repeated measurements.

use serde::Serialize;

/// A set of repeated measurements: the median and its spread.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub q1: f64,
    pub q3: f64,
    pub min: f64,
    pub max: f64,
}

/// Linear interpolation between closest ranks; `p` in 0..=100. `sorted` must be sorted.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        len => {
            let rank = (p / 100.0) * (len - 1) as f64;
            let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
        }
    }
}

pub fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

pub fn summarize(values: &[f64]) -> Summary {
    let v = sorted(values);
    Summary {
        n: v.len(),
        median: percentile(&v, 50.0),
        q1: percentile(&v, 25.0),
        q3: percentile(&v, 75.0),
        min: v.first().copied().unwrap_or(f64::NAN),
        max: v.last().copied().unwrap_or(f64::NAN),
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = |x: f64| {
            if x.abs() >= 100.0 {
                format!("{x:.0}")
            } else if x.abs() >= 10.0 {
                format!("{x:.1}")
            } else {
                format!("{x:.2}")
            }
        };
        write!(
            f,
            "{} [{}–{}] (n={})",
            p(self.median),
            p(self.min),
            p(self.max),
            self.n
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_quartiles() {
        let s = summarize(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!(
            (s.median, s.q1, s.q3, s.min, s.max),
            (3.0, 2.0, 4.0, 1.0, 5.0)
        );
        assert_eq!(percentile(&sorted(&[1.0, 2.0]), 50.0), 1.5);
    }
}

/// CPU time (user + system) of the processes that share the machine's cores during a measurement.
#[derive(Debug, Clone)]
pub struct Cpu {
    /// (name, pid); `None`: this process.
    pub procs: Vec<(String, Option<u32>)>,
}

impl Cpu {
    /// Seconds of CPU each process has used so far (NaN when it cannot be read).
    pub fn snapshot(&self) -> Vec<f64> {
        self.procs
            .iter()
            .map(|(_, pid)| {
                let path = match pid {
                    Some(p) => format!("/proc/{p}/stat"),
                    None => "/proc/self/stat".to_owned(),
                };
                cpu_seconds(&path).unwrap_or(f64::NAN)
            })
            .collect()
    }

    pub fn with(&self, name: &str, pid: Option<u32>) -> Cpu {
        let mut c = self.clone();
        if pid.is_some() {
            c.procs.push((name.to_owned(), pid));
        }
        c
    }

    /// CPU milliseconds per unit of work between two snapshots, by process name.
    pub fn per_unit(
        &self,
        before: &[f64],
        after: &[f64],
        units: f64,
    ) -> std::collections::BTreeMap<String, f64> {
        self.procs
            .iter()
            .zip(before.iter().zip(after))
            .map(|((name, _), (b, a))| (name.clone(), (a - b) * 1e3 / units))
            .collect()
    }
}

fn cpu_seconds(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on Linux.
    Some((utime + stime) / 100.0)
}
