//! What test containers run, and how they are checked: busybox command lines
//! with a known behaviour, shared by the in-process tests and the process
//! tests of `orchctl`. Plain data; no I/O.

use std::time::Duration;

use orch::time::duration;
use orch::v1::HealthCheck;
use orch::v1::health_check::Probe;

/// A shell line that makes `/www` with a static `index.html` and a CGI
/// script `/cgi-bin/health` answering with `status`, then runs busybox httpd
/// on `port` in the foreground. (busybox httpd turns a CGI's leading
/// `Status: ` header into the status line.) httpd, as PID 1, ignores
/// SIGTERM: give such tasks a short stop grace period.
pub fn httpd(port: u16, status: &str) -> Vec<String> {
    let script = format!(
        "mkdir -p /www/cgi-bin && echo ok > /www/index.html && \
         printf '#!/bin/sh\\nprintf \"Status: {status}\\\\r\\\\n\\\\r\\\\n\"\\n' > /www/cgi-bin/health && \
         chmod +x /www/cgi-bin/health && exec httpd -f -p {port} -h /www"
    );
    vec!["sh".into(), "-c".into(), script]
}

/// A fast health check: a probe every 300 ms, unhealthy after 2 failures.
pub fn fast_check(probe: Probe) -> HealthCheck {
    HealthCheck {
        probe: Some(probe),
        interval: Some(duration(Duration::from_millis(300))),
        timeout: Some(duration(Duration::from_millis(300))),
        retries: Some(2),
        start_period: None,
    }
}

/// `n` specs of tasks named `name` that stay pending on a cluster without
/// workers (and would fail to pull on one): each makes one event when
/// submitted, for tests of the event stream that need no container.
pub fn pending(name: &str, n: usize) -> Vec<orch::v1::TaskSpec> {
    (0..n)
        .map(|_| orch::v1::TaskSpec {
            name: name.into(),
            image: "orch-test/never-pulled".into(),
            ..Default::default()
        })
        .collect()
}
