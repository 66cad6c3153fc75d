//! The znode layout (spec zk-protocol §1). All paths are relative to the chroot.

/// Root of node requests.
pub const REQUESTS: &str = "/nodepool/requests";
/// Root of request lock directories.
pub const REQUEST_LOCKS: &str = "/nodepool/requests-lock";
/// Root of nodes.
pub const NODES: &str = "/nodepool/nodes";
/// Root of images.
pub const IMAGES: &str = "/nodepool/images";
/// Root of component registrations.
pub const COMPONENTS: &str = "/nodepool/components";
/// The stats election.
pub const STATS_ELECTION: &str = "/nodepool/elections/stats";

/// `/nodepool/nodes/<id>`.
pub fn node(id: &str) -> String {
    format!("{NODES}/{id}")
}

/// `/nodepool/nodes/<id>/lock`.
pub fn node_lock(id: &str) -> String {
    format!("{NODES}/{id}/lock")
}

/// `/nodepool/requests/<id>`.
pub fn request(id: &str) -> String {
    format!("{REQUESTS}/{id}")
}

/// `/nodepool/requests-lock/<id>`.
pub fn request_lock(id: &str) -> String {
    format!("{REQUEST_LOCKS}/{id}")
}

/// `/nodepool/images/<image>`.
pub fn image(image: &str) -> String {
    format!("{IMAGES}/{image}")
}

/// `/nodepool/images/<image>/builds`.
pub fn builds(image: &str) -> String {
    format!("{IMAGES}/{image}/builds")
}

/// `/nodepool/images/<image>/builds/<build>`.
pub fn build(image: &str, build: &str) -> String {
    format!("{IMAGES}/{image}/builds/{build}")
}

/// The image build lock, `/nodepool/images/<image>/builds/lock`.
pub fn image_build_lock(image: &str) -> String {
    format!("{IMAGES}/{image}/builds/lock")
}

/// The build-id lock, `…/builds/<build>/lock`.
pub fn build_lock(image: &str, build: &str) -> String {
    format!("{IMAGES}/{image}/builds/{build}/lock")
}

/// `…/builds/<build>/providers/<provider>/images`.
pub fn uploads(image: &str, build: &str, provider: &str) -> String {
    format!("{IMAGES}/{image}/builds/{build}/providers/{provider}/images")
}

/// `…/providers/<provider>/images/<upload>`.
pub fn upload(image: &str, build: &str, provider: &str, upload: &str) -> String {
    format!("{IMAGES}/{image}/builds/{build}/providers/{provider}/images/{upload}")
}

/// The upload lock, `…/providers/<provider>/images/lock`.
pub fn upload_lock(image: &str, build: &str, provider: &str) -> String {
    format!("{IMAGES}/{image}/builds/{build}/providers/{provider}/images/lock")
}

/// The upload-number lock, `…/images/<upload>/lock`.
pub fn upload_number_lock(image: &str, build: &str, provider: &str, upload: &str) -> String {
    format!("{IMAGES}/{image}/builds/{build}/providers/{provider}/images/{upload}/lock")
}

/// `/nodepool/images/<image>/request-build`.
pub fn image_build_request(image: &str) -> String {
    format!("{IMAGES}/{image}/request-build")
}

/// `/nodepool/images/<image>/pause`.
pub fn image_pause(image: &str) -> String {
    format!("{IMAGES}/{image}/pause")
}

/// `/nodepool/components/<kind>`.
pub fn components(kind: &str) -> String {
    format!("{COMPONENTS}/{kind}")
}

/// The parent of a path (`/a/b` → `/a`); `None` for `/` and top-level names.
pub fn parent(path: &str) -> Option<&str> {
    match path.rfind('/') {
        Some(0) | None => None,
        Some(i) => Some(&path[..i]),
    }
}
