//! The step events a `nodeforge build --json` run prints, one JSON object
//! a line: the `step-end` reports, by step name and status.

use super::Run;

/// The `(name, status)` of each step that ended, in order.
#[derive(Debug, PartialEq, Eq)]
pub struct Steps(pub Vec<(String, String)>);

impl Run {
    /// Every event line of stdout; panics naming a line that is not JSON.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.stdout()
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| {
                    panic!("event line {l:?} is not JSON ({e})\n{}", self.report())
                })
            })
            .collect()
    }

    /// The steps of a `build --json` run.
    pub fn steps(&self) -> Steps {
        let field = |e: &serde_json::Value, k: &str| {
            e["report"][k]
                .as_str()
                .unwrap_or_else(|| panic!("step-end event without report.{k}: {e}"))
                .to_owned()
        };
        Steps(
            self.events()
                .iter()
                .filter(|e| e["event"] == "step-end")
                .map(|e| (field(e, "name"), field(e, "status")))
                .collect(),
        )
    }
}

impl Steps {
    pub fn names(&self) -> Vec<&str> {
        self.0.iter().map(|(n, _)| n.as_str()).collect()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The status of step `name`; panics listing the steps if it did not run.
    pub fn status(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.as_str())
            .unwrap_or_else(|| panic!("no step {name} in {:?}", self.0))
    }

    /// Panics unless each of `names` ended with `status`.
    pub fn assert(&self, names: &[&str], status: &str) {
        for n in names {
            assert_eq!(self.status(n), status, "step {n} in {:?}", self.0);
        }
    }
}
