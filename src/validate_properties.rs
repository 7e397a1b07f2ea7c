//! Properties of [`crate::validate`], over the messages [`crate::testing`]
//! generates: no message makes it panic, every valid message passes (also
//! after a round trip through the wire format), and a valid message with one
//! field broken is refused naming exactly that field.

use proptest::prelude::*;
use prost::Message;

use crate::testing;
use crate::validate::{self, FieldError};

/// Whether `path` is a field path as the rules write them: names joined by
/// `.`, each with optional `[index]` or `["key"]` (a key quoted as Rust
/// debug-prints it), the first name one of `fields`.
fn is_path(path: &str, fields: &[&str]) -> bool {
    let first = path.split(['.', '[']).next().unwrap_or_default();
    if !fields.contains(&first) {
        return false;
    }
    let mut rest = path;
    loop {
        let name_len = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(rest.len());
        if name_len == 0 {
            return false;
        }
        rest = &rest[name_len..];
        while let Some(inner) = rest.strip_prefix('[') {
            let end = if let Some(quoted) = inner.strip_prefix('"') {
                // The closing quote is the first one not escaped.
                let mut escaped = false;
                let Some(close) = quoted.char_indices().find_map(|(i, c)| {
                    let close = c == '"' && !escaped;
                    escaped = c == '\\' && !escaped;
                    close.then_some(i)
                }) else {
                    return false;
                };
                1 + close + 1
            } else {
                inner
                    .find(|c: char| !c.is_ascii_digit())
                    .filter(|n| *n > 0)
                    .unwrap_or(0)
            };
            if end == 0 || !inner[end..].starts_with(']') {
                return false;
            }
            rest = &inner[end + 1..];
        }
        match rest.strip_prefix('.') {
            Some(next) => rest = next,
            None => return rest.is_empty(),
        }
    }
}

/// The top-level fields of each message, as the paths name them.
const TASK_FIELDS: &[&str] = &[
    "name",
    "image",
    "command",
    "env",
    "milli_cpus",
    "memory_bytes",
    "disk_bytes",
    "ports",
    "restart",
    "labels",
    "node_selector",
    "stop_grace_period",
    "health_check",
];
const SERVICE_FIELDS: &[&str] = &[
    "name",
    "mode",
    "replicated",
    "global",
    "batch",
    "task",
    "placement",
    "update",
];
const REGISTER_FIELDS: &[&str] = &["node_id", "name", "address", "labels", "capacity"];

fn proper(e: &FieldError, fields: &[&str]) -> Result<(), TestCaseError> {
    prop_assert!(
        is_path(&e.field, fields),
        "{:?} is not a field path",
        e.field
    );
    prop_assert!(!e.rule.trim().is_empty(), "{e:?} says no rule");
    Ok(())
}

fn accepted<M: Message + Default + PartialEq + std::fmt::Debug>(
    m: &M,
    check: fn(&M) -> Result<(), FieldError>,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(check(m), Ok(()));
    let back = round_trip(m);
    prop_assert_eq!(&back, m);
    prop_assert_eq!(check(&back), Ok(()));
    Ok(())
}

fn refused<M>(
    (m, field): testing::Broken<M>,
    check: fn(&M) -> Result<(), FieldError>,
    fields: &[&str],
) -> Result<(), TestCaseError> {
    let err = check(&m).expect_err(&field);
    prop_assert_eq!(&err.field, &field, "{}", err);
    proper(&err, fields)
}

fn round_trip<M: Message + Default>(m: &M) -> M {
    M::decode(m.encode_to_vec().as_slice()).expect("what prost encodes decodes")
}

#[test]
fn paths_are_recognised() {
    for good in [
        "image",
        "ports[1].host_port",
        "env[\"A=B\"]",
        "env[\"a\\\"]b\"]",
        "health_check.exec.command[0]",
        "labels[\"orch.x\"]",
    ] {
        assert!(is_path(good, TASK_FIELDS), "{good}");
    }
    for bad in [
        "", "spec", "image.", "ports[]", "ports[x]", "env[\"a]", "Image", "image: x",
    ] {
        assert!(!is_path(bad, TASK_FIELDS), "{bad}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever a client sends, validation answers, and a refusal names a
    /// field of the message and a rule.
    #[test]
    fn any_task_spec_gets_an_answer(spec in testing::wild_task_spec()) {
        if let Err(e) = validate::task_spec(&spec) {
            proper(&e, TASK_FIELDS)?;
        }
    }

    #[test]
    fn any_service_spec_gets_an_answer(spec in testing::wild_service_spec()) {
        if let Err(e) = validate::service_spec(&spec) {
            proper(&e, SERVICE_FIELDS)?;
        }
    }

    #[test]
    fn any_registration_gets_an_answer(req in testing::wild_register_request()) {
        if let Err(e) = validate::register(&req) {
            proper(&e, REGISTER_FIELDS)?;
        }
    }

    /// The verdict depends only on what goes over the wire: a message and
    /// its decoded encoding get the same answer.
    #[test]
    fn the_verdict_survives_the_wire(
        task in testing::wild_task_spec(),
        service in testing::wild_service_spec(),
        register in testing::wild_register_request(),
    ) {
        prop_assert_eq!(validate::task_spec(&task), validate::task_spec(&round_trip(&task)));
        prop_assert_eq!(validate::service_spec(&service), validate::service_spec(&round_trip(&service)));
        prop_assert_eq!(validate::register(&register), validate::register(&round_trip(&register)));
    }

    /// Every spec the documented rules allow is accepted, and still is
    /// after a round trip through the wire format, which changes nothing.
    #[test]
    fn valid_messages_are_accepted(
        task in testing::task_spec(),
        service in testing::service_spec(),
        register in testing::register_request(),
    ) {
        accepted(&task, validate::task_spec)?;
        accepted(&service, validate::service_spec)?;
        accepted(&register, validate::register)?;
    }

    /// A valid message with one field broken is refused, naming that
    /// field, whatever the rest of the message holds.
    #[test]
    fn one_broken_field_is_named(
        task in testing::broken_task_spec(),
        service in testing::broken_service_spec(),
        register in testing::broken_register_request(),
    ) {
        refused(task, validate::task_spec, TASK_FIELDS)?;
        refused(service, validate::service_spec, SERVICE_FIELDS)?;
        refused(register, validate::register, REGISTER_FIELDS)?;
    }

    /// An id is accepted exactly when it is a UUID, and a refusal names the
    /// field it was asked about.
    #[test]
    fn ids_are_uuids(text in testing::wild_text(), n in any::<u128>(), field in "[a-z_]{1,10}") {
        let uuid = uuid::Uuid::from_u128(n);
        prop_assert_eq!(validate::id(&field, &uuid.to_string()), Ok(uuid));
        match validate::id(&field, &text) {
            Ok(id) => prop_assert_eq!(Some(id), uuid::Uuid::parse_str(&text).ok()),
            Err(e) => {
                prop_assert_eq!(&e.field, &field);
                prop_assert!(uuid::Uuid::parse_str(&text).is_err());
            }
        }
    }
}
