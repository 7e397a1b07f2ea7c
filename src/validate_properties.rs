//! Properties of [`crate::validate`], over the messages [`crate::testing`]
//! generates: no message makes it panic, every valid message passes (also
//! after a round trip through the wire format), and a valid message with one
//! field broken is refused naming exactly that field.

use proptest::prelude::*;
use prost::Message;

use crate::testing;
use crate::validate::{self, FieldError};

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
        testing::is_field_path(&e.field, fields),
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
        assert!(testing::is_field_path(good, TASK_FIELDS), "{good}");
    }
    for bad in [
        "", "spec", "image.", "ports[]", "ports[x]", "env[\"a]", "Image", "image: x",
    ] {
        assert!(!testing::is_field_path(bad, TASK_FIELDS), "{bad}");
    }
    assert!(testing::names_a_field(
        "env[\"a: b\"]: must not contain NUL",
        TASK_FIELDS
    ));
    for bad in ["image", "image:", "image: ", "image x", "spec.image: x"] {
        assert!(!testing::names_a_field(bad, TASK_FIELDS), "{bad}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(testing::cases(512)))]

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
    fn valid_task_specs_are_accepted(spec in testing::task_spec()) {
        accepted(&spec, validate::task_spec)?;
    }

    #[test]
    fn valid_service_specs_are_accepted(spec in testing::service_spec()) {
        accepted(&spec, validate::service_spec)?;
    }

    #[test]
    fn valid_registrations_are_accepted(req in testing::register_request()) {
        accepted(&req, validate::register)?;
    }

    /// A valid message with one field broken is refused, naming that
    /// field, whatever the rest of the message holds.
    #[test]
    fn one_broken_task_field_is_named(broken in testing::broken_task_spec()) {
        refused(broken, validate::task_spec, TASK_FIELDS)?;
    }

    #[test]
    fn one_broken_service_field_is_named(broken in testing::broken_service_spec()) {
        refused(broken, validate::service_spec, SERVICE_FIELDS)?;
    }

    #[test]
    fn one_broken_registration_field_is_named(broken in testing::broken_register_request()) {
        refused(broken, validate::register, REGISTER_FIELDS)?;
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
