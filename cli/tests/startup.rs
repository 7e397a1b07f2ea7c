//! `orchctl dev` and `orchctl manager` that cannot start their manager exit
//! non-zero with the reason in one line, and never say orch runs.

mod support;

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use support::{DEADLINE, ORCHCTL, free_port, orchctl_within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_in_use_stops_dev_and_manager_with_the_reason() {
    let dir = tempfile::Builder::new()
        .prefix("orch-startup-")
        .tempdir()
        .expect("temp dir");
    let data = dir.path().join("data").display().to_string();
    // The first `orchctl dev` holds the data directory (redb locks its file).
    let mut first = Command::new(ORCHCTL)
        .args(["dev", "--listen"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .args(["--data-dir", &data])
        .env_remove("ORCH_MANAGER")
        .env_remove("ORCH_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the first orchctl dev");
    let mut lines = BufReader::new(first.stderr.take().expect("stderr")).lines();
    tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.expect("read stderr") {
            if line.contains("orch is running") {
                return;
            }
        }
        panic!("the first orchctl dev ended without running");
    })
    .await
    .expect("the first orchctl dev runs in time");
    // Keep reading, so that its logs never fill the pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    for command in ["dev", "manager"] {
        let listen = format!("127.0.0.1:{}", free_port());
        let ran = orchctl_within(
            Duration::from_secs(60),
            &[command, "--listen", &listen, "--data-dir", &data],
        )
        .await;
        assert!(
            !ran.stderr.contains("orch is running"),
            "{command}: {ran:#?}"
        );
        let line = ran.refused();
        assert!(
            line.contains("another orch manager") && line.contains(&data),
            "{command}: {line}"
        );
    }
    first.start_kill().expect("stop the first orchctl dev");
    first.wait().await.expect("reap it");
}
