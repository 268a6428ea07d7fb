//! The engine's input: the aggregated figures of every reported metric for one region and one
//! period (ingestion computes them; tests and what-ifs build them directly).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::numbers::Num;

/// Progress of an evaluation task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum TaskStatus {
    #[default]
    NotStarted,
    InProgress,
    Done,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::NotStarted => "NOT_STARTED",
            TaskStatus::InProgress => "IN_PROGRESS",
            TaskStatus::Done => "DONE",
        }
    }
}

/// One metric's aggregated figure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Figure {
    /// COUNT and AMOUNT (sums), RANK and SCORE (at the region).
    Number(Num),
    /// BOOL (true when any value is true).
    Flag(bool),
    /// DOMAIN_FLAG: the domains flagged true.
    Domains(BTreeSet<String>),
    /// TASK_STATUS: the status of each reported task.
    Tasks(BTreeMap<String, TaskStatus>),
}

impl Figure {
    /// The figure as shown in scorecards: numbers exactly, flags as true/false, domain and task
    /// figures as their count.
    pub fn display(&self) -> String {
        match self {
            Figure::Number(n) => n.to_plain(),
            Figure::Flag(b) => b.to_string(),
            Figure::Domains(d) => d.len().to_string(),
            Figure::Tasks(t) => t.len().to_string(),
        }
    }
}

/// The aggregated figures for one region and period. A metric without a figure was not
/// reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Values {
    figures: HashMap<String, Figure>,
}

impl Values {
    pub fn new() -> Self {
        Values::default()
    }

    pub fn set(&mut self, metric: impl Into<String>, figure: Figure) -> &mut Self {
        self.figures.insert(metric.into(), figure);
        self
    }

    pub fn set_number(&mut self, metric: impl Into<String>, n: Num) -> &mut Self {
        self.set(metric, Figure::Number(n))
    }

    pub fn set_flag(&mut self, metric: impl Into<String>, b: bool) -> &mut Self {
        self.set(metric, Figure::Flag(b))
    }

    pub fn set_domains<I, S>(&mut self, metric: impl Into<String>, domains: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.set(
            metric,
            Figure::Domains(domains.into_iter().map(Into::into).collect()),
        )
    }

    pub fn remove(&mut self, metric: &str) -> Option<Figure> {
        self.figures.remove(metric)
    }

    pub fn get(&self, metric: &str) -> Option<&Figure> {
        self.figures.get(metric)
    }

    pub fn is_reported(&self, metric: &str) -> bool {
        self.figures.contains_key(metric)
    }

    /// A numeric figure, if reported.
    pub fn number(&self, metric: &str) -> Option<&Num> {
        match self.figures.get(metric) {
            Some(Figure::Number(n)) => Some(n),
            _ => None,
        }
    }

    /// A BOOL figure, if reported.
    pub fn flag(&self, metric: &str) -> Option<bool> {
        match self.figures.get(metric) {
            Some(Figure::Flag(b)) => Some(*b),
            _ => None,
        }
    }

    /// The domains flagged in a DOMAIN_FLAG metric (none when nothing was reported).
    pub fn domains(&self, metric: &str) -> BTreeSet<String> {
        match self.figures.get(metric) {
            Some(Figure::Domains(d)) => d.clone(),
            _ => BTreeSet::new(),
        }
    }

    /// The reported status of a task (NOT_STARTED when nobody reported one).
    pub fn task_status(&self, task_metric: &str, task_id: &str) -> TaskStatus {
        match self.figures.get(task_metric) {
            Some(Figure::Tasks(t)) => t.get(task_id).copied().unwrap_or_default(),
            _ => TaskStatus::NotStarted,
        }
    }

    pub fn set_task(&mut self, task_metric: &str, task_id: impl Into<String>, s: TaskStatus) {
        let entry = self
            .figures
            .entry(task_metric.to_owned())
            .or_insert_with(|| Figure::Tasks(BTreeMap::new()));
        if let Figure::Tasks(t) = entry {
            t.insert(task_id.into(), s);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Figure)> {
        self.figures.iter()
    }
}
