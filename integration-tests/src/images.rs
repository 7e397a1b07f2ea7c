//! Test images, built locally: there is no registry to pull from on our
//! machines, and the engine starts with no images.
//!
//! This module owns the `orch-test/*` image tags and nothing else: it never
//! removes images it did not build, and never touches containers.

use std::sync::LazyLock;

use bollard::Docker;
use bollard::query_parameters::{BuildImageOptionsBuilder, RemoveImageOptions};
use futures::StreamExt;
use tokio::sync::OnceCell;

/// The tag of the busybox test image.
pub const BUSYBOX: &str = "orch-test/busybox:latest";

/// Where Debian's `busybox-static` puts its static binary.
const BUSYBOX_BINARY: &str = "/bin/busybox";

/// The image label recording which busybox binary the image holds, so a
/// changed binary leads to a rebuild and an unchanged one to none.
const BUSYBOX_DIGEST_LABEL: &str = "orch-test.busybox-fnv1a64";

/// Why a test image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The static busybox binary is not on this machine.
    #[error(
        "reading {BUSYBOX_BINARY} ({source}); install it with `apt-get install -y busybox-static`"
    )]
    Busybox {
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The build context could not be assembled.
    #[error("assembling the build context: {0}")]
    Context(std::io::Error),
    /// The engine failed the build.
    #[error("building {tag}: {source}")]
    Build {
        /// The image being built.
        tag: String,
        /// What the engine said.
        source: bollard::errors::Error,
    },
}

static BUSYBOX_IMAGE: LazyLock<OnceCell<String>> = LazyLock::new(OnceCell::new);

/// An image `FROM scratch` with Debian's static busybox at `/bin/busybox` and
/// its applets (`sh`, `sleep`, `nc`, `env`, ...) linked into `/bin`. Built at
/// most once per process, and not at all if the engine already has it with
/// the same busybox. Returns the image's tag.
///
/// Test binaries running at once may build it concurrently; both builds
/// succeed and the tag ends up on one of them.
///
/// # Errors
///
/// [`ImageError::Busybox`] if `/bin/busybox` is missing, and
/// [`ImageError::Build`] if the engine fails the build.
pub async fn busybox(docker: &Docker) -> Result<String, ImageError> {
    BUSYBOX_IMAGE
        .get_or_try_init(|| build_busybox(docker))
        .await
        .cloned()
}

async fn build_busybox(docker: &Docker) -> Result<String, ImageError> {
    let binary = tokio::fs::read(BUSYBOX_BINARY)
        .await
        .map_err(|source| ImageError::Busybox { source })?;
    let digest = format!("{:016x}", fnv1a64(&binary));

    if let Ok(existing) = docker.inspect_image(BUSYBOX).await {
        let labels = existing.config.and_then(|c| c.labels).unwrap_or_default();
        if labels.get(BUSYBOX_DIGEST_LABEL) == Some(&digest) {
            return Ok(BUSYBOX.to_owned());
        }
    }

    // Exec form: the image has no shell until this RUN has made one.
    let dockerfile = format!(
        "FROM scratch\n\
         COPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         LABEL {BUSYBOX_DIGEST_LABEL}=\"{digest}\"\n\
         CMD [\"/bin/sh\"]\n"
    );
    let context = build_context(&[
        ("Dockerfile", dockerfile.as_bytes(), 0o644),
        ("busybox", &binary, 0o755),
    ])
    .map_err(ImageError::Context)?;

    let options = BuildImageOptionsBuilder::new()
        .t(BUSYBOX)
        .rm(true)
        .forcerm(true)
        .build();
    let build_error = |source| ImageError::Build {
        tag: BUSYBOX.to_owned(),
        source,
    };
    let mut progress = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    let mut built_id = None;
    while let Some(info) = progress.next().await {
        let info = info.map_err(build_error)?;
        if let Some(id) = info.aux.and_then(|aux| aux.id) {
            built_id = Some(id);
        }
        if let Some(line) = info.stream {
            tracing::debug!(image = BUSYBOX, "{}", line.trim_end());
        }
    }

    // A concurrent build from another test binary may have taken the tag
    // after ours; then our image is an untagged leftover, and goes.
    let tagged_id = docker.inspect_image(BUSYBOX).await.map_err(build_error)?.id;
    if let Some(ours) = built_id
        && tagged_id.as_ref() != Some(&ours)
    {
        let removed = docker
            .remove_image(&ours, None::<RemoveImageOptions>, None)
            .await;
        if let Err(e) = removed {
            tracing::debug!(image = %ours, error = %e, "leaving a superseded test image");
        }
    }
    Ok(BUSYBOX.to_owned())
}

/// An uncompressed tar of `(path, contents, mode)` files: the build context.
fn build_context(files: &[(&str, &[u8], u32)]) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, contents, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(contents.len() as u64);
        header.set_mode(*mode);
        tar.append_data(&mut header, path, *contents)?;
    }
    tar.into_inner()
}

/// FNV-1a, 64 bits: a stable fingerprint of the busybox binary without a
/// hashing dependency (std's hasher may change between Rust releases).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}
