//! Services as the domain sees them: the defaults of a [`ServiceSpec`]'s
//! unset fields — how many replicas and completions, how fast a batch runs,
//! how a rolling update proceeds, how a service's tasks restart.
//!
//! The manager reads a spec through these functions, so a default is written
//! once, next to the proto comment that promises it. The rules a spec must
//! follow are in [`crate::validate::service_spec`]; every function here reads
//! a value validation refuses (an unknown enum number, a negative duration)
//! as unset.

use std::time::Duration;

use crate::v1::{
    BatchMode, FailureAction, ReplicatedMode, RestartCondition, RestartPolicy, ServiceSpec,
    UpdateConfig, UpdateOrder, service_spec,
};

/// The replicas of a replicated service that does not set them.
pub const DEFAULT_REPLICAS: u32 = 1;
/// The completions of a batch service that does not set them.
pub const DEFAULT_COMPLETIONS: u32 = 1;
/// How many tasks of a batch service run at once, if it does not say.
pub const DEFAULT_BATCH_PARALLELISM: u32 = 1;
/// How many tasks an update replaces at once, if it does not say.
pub const DEFAULT_UPDATE_PARALLELISM: u32 = 1;
/// How long an update waits between batches, if it does not say.
pub const DEFAULT_UPDATE_DELAY: Duration = Duration::ZERO;
/// How long an update watches a new task, if it does not say.
pub const DEFAULT_UPDATE_MONITOR: Duration = Duration::from_secs(5);
/// The share of updated tasks that may fail, if the update does not say.
pub const DEFAULT_MAX_FAILURE_RATIO: f64 = 0.0;
/// The most restarts of a batch task whose spec sets no restart policy.
pub const DEFAULT_BATCH_MAX_RESTARTS: u32 = 3;

/// How many tasks a replicated service keeps running: `replicas`, or 1.
pub fn replicas(mode: &ReplicatedMode) -> u32 {
    mode.replicas.unwrap_or(DEFAULT_REPLICAS)
}

/// How many tasks of a batch service must exit with code 0: `completions`, or 1.
pub fn completions(mode: &BatchMode) -> u32 {
    mode.completions.unwrap_or(DEFAULT_COMPLETIONS)
}

/// How many tasks of a batch service may run at once: `parallelism`, or 1
/// (never less than 1).
pub fn batch_parallelism(mode: &BatchMode) -> u32 {
    mode.parallelism.unwrap_or(DEFAULT_BATCH_PARALLELISM).max(1)
}

/// A rolling update's settings with every default filled in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateSettings {
    /// How many tasks are replaced at once (at least 1).
    pub parallelism: u32,
    /// The wait after one batch of tasks is replaced before the next starts.
    pub delay: Duration,
    /// Stop the old task first, or start the new one first.
    pub order: UpdateOrder,
    /// How long a new task must run (and be healthy) to count as updated.
    pub monitor: Duration,
    /// What to do when too many new tasks failed.
    pub failure_action: FailureAction,
    /// The share of updated tasks (0 to 1) that may fail before `failure_action`.
    pub max_failure_ratio: f64,
}

impl Default for UpdateSettings {
    fn default() -> Self {
        Self {
            parallelism: DEFAULT_UPDATE_PARALLELISM,
            delay: DEFAULT_UPDATE_DELAY,
            order: UpdateOrder::StopFirst,
            monitor: DEFAULT_UPDATE_MONITOR,
            failure_action: FailureAction::Rollback,
            max_failure_ratio: DEFAULT_MAX_FAILURE_RATIO,
        }
    }
}

/// The settings a service's update config means (`spec.update.as_ref()`);
/// no config at all means every default: one task at a time, no delay,
/// stop-first, a 5 second monitor, roll back on the first failure.
pub fn update_settings(update: Option<&UpdateConfig>) -> UpdateSettings {
    let defaults = UpdateSettings::default();
    let Some(u) = update else {
        return defaults;
    };
    let duration = |d: &Option<prost_types::Duration>, default| {
        d.as_ref()
            .and_then(crate::time::std_duration)
            .unwrap_or(default)
    };
    UpdateSettings {
        parallelism: u.parallelism.unwrap_or(defaults.parallelism).max(1),
        delay: duration(&u.delay, defaults.delay),
        order: match UpdateOrder::try_from(u.order) {
            Ok(UpdateOrder::StartFirst) => UpdateOrder::StartFirst,
            _ => UpdateOrder::StopFirst,
        },
        monitor: duration(&u.monitor, defaults.monitor),
        failure_action: match FailureAction::try_from(u.failure_action) {
            Ok(a @ (FailureAction::Pause | FailureAction::Continue)) => a,
            _ => FailureAction::Rollback,
        },
        max_failure_ratio: u
            .max_failure_ratio
            .filter(|r| (0.0..=1.0).contains(r))
            .unwrap_or(defaults.max_failure_ratio),
    }
}

/// The restart policy of a task of a service in `mode` whose template sets
/// none: `always` (no limit) for replicated and global services, `on-failure`
/// with at most 3 restarts for batch. A spec without a mode (which validation
/// refuses) gets the replicated default.
pub fn default_restart(mode: Option<&service_spec::Mode>) -> RestartPolicy {
    match mode {
        Some(service_spec::Mode::Batch(_)) => RestartPolicy {
            condition: RestartCondition::OnFailure as i32,
            max_restarts: DEFAULT_BATCH_MAX_RESTARTS,
        },
        _ => RestartPolicy {
            condition: RestartCondition::Always as i32,
            max_restarts: 0,
        },
    }
}

/// The restart policy of a service's tasks: the template's own, or
/// [`default_restart`] for the service's mode.
pub fn restart_policy(spec: &ServiceSpec) -> RestartPolicy {
    spec.task
        .as_ref()
        .and_then(|t| t.restart)
        .unwrap_or_else(|| default_restart(spec.mode.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{GlobalMode, TaskSpec};

    fn secs(n: i64) -> Option<prost_types::Duration> {
        Some(prost_types::Duration {
            seconds: n,
            nanos: 0,
        })
    }

    #[test]
    fn mode_defaults() {
        assert_eq!(replicas(&ReplicatedMode { replicas: None }), 1);
        assert_eq!(replicas(&ReplicatedMode { replicas: Some(0) }), 0);
        assert_eq!(replicas(&ReplicatedMode { replicas: Some(7) }), 7);
        let unset = BatchMode::default();
        assert_eq!(completions(&unset), 1);
        assert_eq!(batch_parallelism(&unset), 1);
        let set = BatchMode {
            completions: Some(5),
            parallelism: Some(2),
        };
        assert_eq!(completions(&set), 5);
        assert_eq!(batch_parallelism(&set), 2);
        let zero = BatchMode {
            completions: None,
            parallelism: Some(0),
        };
        assert_eq!(batch_parallelism(&zero), 1);
    }

    #[test]
    fn update_defaults() {
        let defaults = UpdateSettings {
            parallelism: 1,
            delay: Duration::ZERO,
            order: UpdateOrder::StopFirst,
            monitor: Duration::from_secs(5),
            failure_action: FailureAction::Rollback,
            max_failure_ratio: 0.0,
        };
        assert_eq!(update_settings(None), defaults);
        assert_eq!(update_settings(Some(&UpdateConfig::default())), defaults);
        // Values validation refuses read as unset.
        let refused = UpdateConfig {
            parallelism: Some(0),
            delay: secs(-1),
            order: 9,
            monitor: secs(-5),
            failure_action: 9,
            max_failure_ratio: Some(f64::NAN),
        };
        assert_eq!(update_settings(Some(&refused)), defaults);
        let set = UpdateConfig {
            parallelism: Some(3),
            delay: secs(2),
            order: UpdateOrder::StartFirst as i32,
            monitor: secs(30),
            failure_action: FailureAction::Pause as i32,
            max_failure_ratio: Some(0.25),
        };
        assert_eq!(
            update_settings(Some(&set)),
            UpdateSettings {
                parallelism: 3,
                delay: Duration::from_secs(2),
                order: UpdateOrder::StartFirst,
                monitor: Duration::from_secs(30),
                failure_action: FailureAction::Pause,
                max_failure_ratio: 0.25,
            }
        );
    }

    #[test]
    fn restart_defaults_depend_on_the_mode() {
        let always = RestartPolicy {
            condition: RestartCondition::Always as i32,
            max_restarts: 0,
        };
        let on_failure = RestartPolicy {
            condition: RestartCondition::OnFailure as i32,
            max_restarts: 3,
        };
        let mut spec = ServiceSpec {
            mode: Some(service_spec::Mode::Replicated(ReplicatedMode::default())),
            task: Some(TaskSpec::default()),
            ..Default::default()
        };
        assert_eq!(restart_policy(&spec), always);
        spec.mode = Some(service_spec::Mode::Global(GlobalMode {}));
        assert_eq!(restart_policy(&spec), always);
        spec.mode = Some(service_spec::Mode::Batch(BatchMode::default()));
        assert_eq!(restart_policy(&spec), on_failure);
        spec.mode = None;
        assert_eq!(restart_policy(&spec), always);
        // The template's own policy wins.
        let never = RestartPolicy {
            condition: RestartCondition::Never as i32,
            max_restarts: 0,
        };
        spec.task = Some(TaskSpec {
            restart: Some(never),
            ..Default::default()
        });
        assert_eq!(restart_policy(&spec), never);
    }
}
