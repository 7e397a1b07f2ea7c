//! The limits on what a client or a worker may send, in one place, so the
//! manager's validation, `orchctl` and the documentation name the same
//! numbers; and [`quote`], the one way an error message shows a value it
//! was given.
//!
//! The limits follow Docker's and Kubernetes' practice where they have one
//! (label keys as long as a DNS subdomain, an argument as long as the
//! kernel's `MAX_ARG_STRLEN`), and are generous elsewhere: they are there so
//! that no request can make the manager's memory, its store or its replies
//! grow without bound, not to judge what is reasonable. The whole encoded
//! spec is bounded too ([`MAX_SPEC_BYTES`]), so that a page of tasks or a
//! worker's full set of assignments is a known number of bytes per task.

/// The longest encoded `TaskSpec` (the whole of it, in protobuf bytes):
/// 256 KiB. Kubernetes keeps a whole object under 1.5 MiB; a task spec is
/// a small part of one.
pub const MAX_SPEC_BYTES: usize = 256 << 10;
/// The longest image reference: a name of 255 (Docker's limit), a tag of
/// 128 and a `sha256` digest fit.
pub const MAX_IMAGE_BYTES: usize = 512;
/// The most arguments of a command (`command`, a health check's `exec`).
pub const MAX_ARGS: usize = 4096;
/// The longest argument: Linux's `MAX_ARG_STRLEN`, 128 KiB.
pub const MAX_ARG_BYTES: usize = 128 << 10;
/// The most environment variables of a task.
pub const MAX_ENV: usize = 1024;
/// The longest environment variable name.
pub const MAX_ENV_KEY_BYTES: usize = 256;
/// The longest environment variable value: the kernel's limit on one
/// `NAME=value` string, 128 KiB.
pub const MAX_ENV_VALUE_BYTES: usize = 128 << 10;
/// The most labels of a task, and of entries of a node selector or of a
/// service's placement constraints.
pub const MAX_LABELS: usize = 256;
/// The longest label key (also of a node selector or constraint): a DNS
/// subdomain, as Kubernetes' label prefixes.
pub const MAX_LABEL_KEY_BYTES: usize = 253;
/// The longest label value of a task (also of a node selector or
/// constraint).
pub const MAX_LABEL_VALUE_BYTES: usize = 4096;
/// The most published ports of a task.
pub const MAX_PORTS: usize = 1024;
/// The longest path of an HTTP health check.
pub const MAX_HTTP_PATH_BYTES: usize = 2048;
/// The longest node name a worker registers with: a DNS subdomain.
pub const MAX_NODE_NAME_BYTES: usize = 253;
/// The longest node address a worker registers with.
pub const MAX_NODE_ADDRESS_BYTES: usize = 1024;
/// The most labels of a node.
pub const MAX_NODE_LABELS: usize = 64;
/// The longest label value of a node. Shorter than a task's: every node is
/// in every `ListNodes` reply, which is not paged.
pub const MAX_NODE_LABEL_VALUE_BYTES: usize = 253;
/// The most entries of `ListTasks`' `states` filter: more than there are
/// states only repeats them.
pub const MAX_STATE_FILTERS: usize = 16;
/// The most statuses in one report of a worker (`StatusBatch`). The
/// worker sends at most 1,000.
pub const MAX_STATUSES: usize = 10_000;
/// The longest message of a worker's report (a pull error, why a probe
/// failed); a longer one is cut to this, as it is for people only.
pub const MAX_STATUS_MESSAGE_BYTES: usize = 4096;
/// The longest container id in a worker's report (Docker's are 64
/// hexadecimal digits); a longer one is cut to this.
pub const MAX_CONTAINER_ID_BYTES: usize = 128;
/// How many characters of a value an error message quotes.
pub const QUOTE_CHARS: usize = 64;
/// The longest error message the manager sends: a gRPC status travels in
/// HTTP/2 headers, which clients refuse beyond a few KiB.
pub const MAX_ERROR_BYTES: usize = 1024;

/// A value for an error message, quoted as `{:?}` would, but only its
/// first [`QUOTE_CHARS`] characters, then `…` and how long it was.
pub fn quote(value: &str) -> String {
    match value.char_indices().nth(QUOTE_CHARS) {
        None => format!("{value:?}"),
        Some((end, _)) => format!("{:?}… ({} bytes)", &value[..end], value.len()),
    }
}

/// Cuts `s` to at most `max` bytes, at a character boundary, marking the
/// cut with `…` (which counts towards `max`). Returns whether it cut.
pub fn truncate(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    const MARK: &str = "…";
    let mut end = max.saturating_sub(MARK.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str(MARK);
    true
}

/// A size for an error message: bytes below 1 KiB, else KiB or MiB.
pub fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should fail loudly, where it fails"
)]
mod tests {
    use super::*;

    #[test]
    fn a_short_value_is_quoted_whole() {
        assert_eq!(quote("web"), "\"web\"");
        assert_eq!(quote(&"a".repeat(64)), format!("\"{}\"", "a".repeat(64)));
    }

    #[test]
    fn a_long_value_is_quoted_by_its_start_and_length() {
        let q = quote(&"é".repeat(3 << 20));
        assert!(q.starts_with(&format!("\"{}\"…", "é".repeat(64))), "{q}");
        assert!(q.ends_with("(6291456 bytes)"), "{q}");
        assert!(q.len() < 200);
    }

    #[test]
    fn truncation_keeps_characters_whole_and_marks_the_cut() {
        let mut s = "é".repeat(10);
        assert!(truncate(&mut s, 8));
        assert_eq!(s, "éé…");
        assert!(s.len() <= 8);
        let mut s = "short".to_string();
        assert!(!truncate(&mut s, 8));
        assert_eq!(s, "short");
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(size(MAX_SPEC_BYTES), "256 KiB");
        assert_eq!(size(4 << 20), "4 MiB");
        assert_eq!(size(512), "512 bytes");
        assert_eq!(size(1500), "1500 bytes");
    }
}
