//! The scheduling scenario: the cost of one `Scheduler::place` decision at
//! several cluster sizes, with no network and no manager.
//!
//! Each size gets fresh, identical, ready nodes, large enough (1,000 cores,
//! 16 TiB) that no decision is ever refused even at 100 nodes, since a refusal
//! walks every node and writes an explanation, and would be a different
//! measurement; the decisions place identical tasks (100m cpu, 16 MiB), and after each the
//! chosen node's reservation grows as the manager's `State::place` would grow
//! it, so later decisions see fuller nodes. Every strategy runs, and so does a
//! full scan (spread with a sample as large as the cluster), to show what
//! sampling saves.

use std::fmt;
use std::time::{Duration, Instant};

use orch_manager::scheduler::{Demand, NodeSnapshot, Resources, Scheduler, Strategy};

/// One row: a strategy at one cluster size.
#[derive(Debug, Clone)]
pub struct Row {
    /// How many nodes.
    pub nodes: usize,
    /// The strategy's name; `spread (full scan)` for the unsampled one.
    pub strategy: String,
    /// Decisions made.
    pub decisions: usize,
    /// Mean time per decision.
    pub per_decision: Duration,
}

impl Row {
    /// Decisions per second.
    pub fn per_sec(&self) -> f64 {
        1.0 / self.per_decision.as_secs_f64().max(1e-12)
    }
}

/// The table of rows, grouped by strategy, with the growth between sizes.
pub struct Table(pub Vec<Row>);

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<20} {:>8} {:>12} {:>14} {:>10}",
            "strategy", "nodes", "ns/decision", "decisions/s", "growth"
        )?;
        let mut previous: Option<&Row> = None;
        for row in &self.0 {
            let growth = match previous {
                Some(p) if p.strategy == row.strategy => format!(
                    "{:.2}×",
                    row.per_decision.as_secs_f64() / p.per_decision.as_secs_f64().max(1e-12)
                ),
                _ => "-".into(),
            };
            writeln!(
                f,
                "{:<20} {:>8} {:>12.0} {:>14.0} {:>10}",
                row.strategy,
                row.nodes,
                row.per_decision.as_secs_f64() * 1e9,
                row.per_sec(),
                growth
            )?;
            previous = Some(row);
        }
        Ok(())
    }
}

fn nodes(n: usize) -> Vec<NodeSnapshot> {
    (0..n)
        .map(|i| NodeSnapshot {
            ready: true,
            memory_total_bytes: 16 << 40,
            ..NodeSnapshot::new(
                uuid::Uuid::from_u128(i as u128 + 1),
                format!("node-{i}"),
                Default::default(),
                Resources {
                    milli_cpus: 1_000_000,
                    memory_bytes: 16 << 40,
                    disk_bytes: 1 << 40,
                },
            )
        })
        .collect()
}

/// Times `decisions` placements with `scheduler` on `n` fresh nodes.
fn time_one(mut scheduler: Scheduler, n: usize, decisions: usize) -> Duration {
    let mut nodes = nodes(n);
    let demand = Demand {
        resources: Resources {
            milli_cpus: 100,
            memory_bytes: 16 << 20,
            disk_bytes: 0,
        },
        ..Demand::default()
    };
    let start = Instant::now();
    for _ in 0..decisions {
        // Every node has room for 10,000 such tasks; in a tiny cluster a
        // refusal may happen, and is timed too.
        if let Ok(i) = scheduler.place(&demand, &nodes) {
            nodes[i].reserve(&demand);
        }
    }
    Duration::from_secs_f64(start.elapsed().as_secs_f64() / decisions.max(1) as f64)
}

/// Measures every strategy (and the full scan) at each size in `sizes`,
/// making `decisions` decisions per row.
pub fn run(sizes: &[usize], decisions: usize) -> Table {
    let mut rows = Vec::new();
    // (name, strategy, whether to scan every node instead of a sample)
    let mut kinds: Vec<(String, Strategy, bool)> = Strategy::ALL
        .iter()
        .map(|&s| (s.to_string(), s, false))
        .collect();
    kinds.push(("spread (full scan)".into(), Strategy::Spread, true));
    for (name, strategy, full) in &kinds {
        for &n in sizes {
            let scheduler = Scheduler::new(*strategy);
            let scheduler = if *full {
                scheduler.with_sample_size(n)
            } else {
                scheduler
            };
            rows.push(Row {
                nodes: n,
                strategy: name.clone(),
                decisions,
                per_decision: time_one(scheduler, n, decisions),
            });
        }
    }
    Table(rows)
}
