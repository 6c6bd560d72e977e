//! The guard of tests that need a device-mapper kernel. Such a test is marked
//! `#[ignore = "needs root and device-mapper (dm_thin_pool): <what for>"]`; run on
//! purpose it calls this first, and fails, naming what is missing, rather than
//! passing without having run (this is how the VM tier runs them).

/// Panics unless the test runs as root on a kernel with device-mapper; `what`
/// says what they are needed for.
#[track_caller]
pub fn require_device_mapper(what: &str) {
    rustlayer_mount::testing::require_root(what);
    if let Err(why) = crate::kernel_support() {
        panic!("this test needs device-mapper ({what}): {why}; hack/vm-test.sh runs it in a VM");
    }
}
