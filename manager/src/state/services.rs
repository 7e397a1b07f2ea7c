//! Services in the live state: each service's stored record, its kept
//! versions and the index of its tasks, and the changes that become store
//! writes and `ServiceEvent`s. As for tasks and nodes, nothing here decides.

use std::collections::{BTreeMap, BTreeSet};

use orch::v1::{Service, ServiceEvent, ServiceVersion, Task, event};
use uuid::Uuid;

use super::State;
use crate::store::Write;

/// How many versions of a service are kept (the one in force always is).
pub const VERSIONS_KEPT: usize = 10;

/// One service as the manager holds it.
#[derive(Debug, Clone)]
pub struct ServiceEntry {
    /// The record as stored: spec, version, rollout, times. Its counts
    /// (`desired`, `running`, ...) are filled in only when it is read.
    pub service: Service,
    /// The kept versions, by number.
    pub versions: BTreeMap<u64, ServiceVersion>,
    /// The scheduler group its tasks spread in.
    pub group: u32,
    /// Every task of the service, ended ones too.
    pub tasks: BTreeSet<Uuid>,
}

impl ServiceEntry {
    /// The version in force.
    pub fn current(&self) -> Option<&ServiceVersion> {
        self.versions.get(&self.service.version)
    }

    /// The highest version number ever kept: the next new version is one more.
    pub fn newest(&self) -> u64 {
        self.versions
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(self.service.version)
    }
}

impl State {
    /// One service, by name.
    pub fn service(&self, name: &str) -> Option<&ServiceEntry> {
        self.services.get(name)
    }

    /// One service, to change; the caller records the change with
    /// [`State::service_changed`].
    pub fn service_mut(&mut self, name: &str) -> Option<&mut ServiceEntry> {
        self.services.get_mut(name)
    }

    /// Every service, by name.
    pub fn services(&self) -> impl Iterator<Item = &ServiceEntry> {
        self.services.values()
    }

    /// The services after the name `after` (exclusive; all with `None`), by name.
    pub fn services_after(&self, after: Option<&str>) -> impl Iterator<Item = &ServiceEntry> {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, |name| Bound::Excluded(name.to_owned()));
        self.services
            .range((start, Bound::Unbounded))
            .map(|(_, e)| e)
    }

    /// The scheduler group of service `name`, or the one it would get if
    /// it were created now (for a plan, which creates nothing).
    pub fn group_of(&self, name: &str) -> u32 {
        self.services
            .get(name)
            .map_or(self.next_group.wrapping_add(1), |e| e.group)
    }

    /// Adds a service loaded from the store or just created (the caller
    /// writes it), with its versions. Its tasks join it as they are inserted.
    pub(super) fn insert_service(
        &mut self,
        service: Service,
        versions: impl IntoIterator<Item = ServiceVersion>,
    ) {
        self.next_group += 1;
        let name = service
            .spec
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let entry = ServiceEntry {
            service,
            versions: versions.into_iter().map(|v| (v.version, v)).collect(),
            group: self.next_group,
            tasks: BTreeSet::new(),
        };
        self.services.insert(name, entry);
    }

    /// Creates a service at its first version: both are written, and an
    /// event says `why`.
    pub fn create_service(&mut self, service: Service, version: ServiceVersion, why: &str) {
        let name = version.service.clone();
        self.writes
            .push(Write::ServiceVersion(Box::new(version.clone())));
        self.insert_service(service, [version]);
        self.service_changed(&name, why);
    }

    /// Adds a new version to a service, and forgets the oldest beyond
    /// [`VERSIONS_KEPT`] (never the one in force).
    pub fn add_version(&mut self, version: ServiceVersion) {
        let name = version.service.clone();
        let Some(entry) = self.services.get_mut(&name) else {
            return;
        };
        self.writes
            .push(Write::ServiceVersion(Box::new(version.clone())));
        entry.versions.insert(version.version, version);
        while entry.versions.len() > VERSIONS_KEPT {
            let current = entry.service.version;
            let Some(&oldest) = entry.versions.keys().find(|&&v| v != current) else {
                break;
            };
            entry.versions.remove(&oldest);
            self.writes.push(Write::ServiceVersionDeleted {
                service: name.clone(),
                version: oldest,
            });
        }
    }

    /// Records a change of a service's record: its write and an event saying `why`.
    pub fn service_changed(&mut self, name: &str, why: &str) {
        let Some(entry) = self.services.get(name) else {
            return;
        };
        let service = entry.service.clone();
        let kind = event::Kind::Service(ServiceEvent {
            name: name.to_owned(),
            version: service.version,
            rollout_state: service.rollout.as_ref().map_or(0, |r| r.state),
            message: why.to_owned(),
            deleted: false,
        });
        self.writes.push(Write::Service(Box::new(service)));
        self.emit(kind);
    }

    /// Deletes a service and its versions (its tasks stay, with its name);
    /// returns what it was.
    pub fn remove_service(&mut self, name: &str) -> Option<ServiceEntry> {
        let entry = self.services.remove(name)?;
        self.writes.push(Write::ServiceDeleted(name.to_owned()));
        self.emit(event::Kind::Service(ServiceEvent {
            name: name.to_owned(),
            version: entry.service.version,
            rollout_state: entry.service.rollout.as_ref().map_or(0, |r| r.state),
            message: "deleted".to_owned(),
            deleted: true,
        }));
        Some(entry)
    }

    /// The service entry a task belongs to, if it still exists (a service
    /// deleted and created again under the same name is another service).
    pub fn service_of(&self, task: &Task) -> Option<&ServiceEntry> {
        if task.service.is_empty() {
            return None;
        }
        self.services
            .get(&task.service)
            .filter(|e| e.service.id == task.service_id)
    }

    /// Adds a task to its service's index, if it has a service.
    pub(super) fn index_task(&mut self, id: Uuid, task: &Task) {
        if task.service.is_empty() {
            return;
        }
        if let Some(entry) = self
            .services
            .get_mut(&task.service)
            .filter(|e| e.service.id == task.service_id)
        {
            entry.tasks.insert(id);
        }
    }
}
