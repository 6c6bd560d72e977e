//! Image volumes (KEP-4639, `volumes[].image`), containerd ≥ 2.1: the kubelet
//! pulls the volume's image and names it in a CRI `Mount.image`; containerd
//! unpacks it into the pod's handler's snapshotter, prepares an active snapshot
//! on its top layer, mounts that on the host and bind-mounts it read-only into
//! the container; RemovePodSandbox unmounts it and removes the snapshot. With a
//! user namespace the kubelet puts the pod's mapping on the mount, and
//! containerd passes it to the snapshotter as mapping labels (2.1.9:
//! `getImageVolumeSnapshotOpts`), so rustlayer's idmapped layers serve the
//! volume too.
//!
//! `Mount.image_sub_path` is not part of 2.1's CRI (it vendors cri-api v0.32;
//! the field came with v0.34, which containerd 2.2.0 reads): this test's proto,
//! the same version, has no such field.

use std::time::Instant;

use rustlayer_e2e_cri::v1 as cri;

use super::user_namespaces::{
    RANGE, UserNamespaceNode, added_actives, container_config, log_lines, logged, mapping,
    mapping_labels, pod_config,
};
use super::{daemon_snapshots, eventually, exited};

/// What the container says about its image volume at /vol.
const LOOK_AT_THE_VOLUME: &str = "echo motd=$(cat /vol/etc/motd); \
     echo data=$(ls /vol/data); \
     echo owners=$(stat -c %u:%g /vol/etc/motd /vol/bin/busybox); \
     if touch /vol/written 2>/dev/null; then echo readonly=no; else echo readonly=yes; fi";

/// Whether `path` is a mount point on the host.
fn mounted(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(path))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, containerd >= 2.1 with CRI, a runc >= 1.2 and CNI plugins: hack/cri-e2e.sh runs it on 2.x"]
async fn kubelet_mounts_image_volumes_from_rustlayer() {
    let node = UserNamespaceNode::start((2, 1, "a CRI image volume (KEP-4639)")).await;
    let top_layer = node
        .workload_image
        .chain_ids
        .last()
        .expect("a layer")
        .clone();

    for (name, host) in [("volume", None), ("volume-userns", Some(18 * RANGE))] {
        let log_directory = node.log_directory(name);
        let sandbox = pod_config(name, &format!("uid-{name}"), &log_directory, host);
        let (pod, _) = node.run_pod(&sandbox).await;
        let volume = |readonly: bool| cri::Mount {
            container_path: "/vol".into(),
            readonly,
            image: Some(cri::ImageSpec {
                image: node.workload_ref.clone(),
                ..Default::default()
            }),
            // The kubelet maps every volume of a pod in a user namespace.
            uid_mappings: host.map(mapping).unwrap_or_default(),
            gid_mappings: host.map(mapping).unwrap_or_default(),
            ..Default::default()
        };
        let with_volume = |container: &str, readonly: bool| {
            let mut config = container_config(
                container,
                &node.workload_image.name,
                LOOK_AT_THE_VOLUME,
                host,
            );
            config.mounts = vec![volume(readonly)];
            config
        };

        // Image volumes are read-only by definition: a writable one is refused
        // before anything is prepared.
        let before = daemon_snapshots(&node.snapshots).await;
        let refused = node
            .create(&pod, &sandbox, with_volume("writable", false))
            .await
            .expect_err("CreateContainer with a writable image volume");
        assert!(
            refused.message().contains("readonly must be true"),
            "{name}: {refused:?}"
        );
        assert_eq!(
            daemon_snapshots(&node.snapshots).await,
            before,
            "{name}: a refused image volume leaves nothing in the daemon"
        );

        let (container, create) = node
            .create(&pod, &sandbox, with_volume("reader", true))
            .await
            .unwrap_or_else(|s| panic!("{name}: CreateContainer with an image volume: {s:?}"));
        let added = added_actives(
            &before,
            &daemon_snapshots(&node.snapshots).await,
            "CreateContainer with an image volume",
        );
        let (root, volumes): (Vec<String>, Vec<String>) =
            added.into_iter().partition(|key| key.contains(&container));
        assert!(
            root.len() == 1 && volumes.len() == 1,
            "{name}: the container's root and its volume, one active snapshot each, and no \
             layer unpacked again: root {root:?}, others {volumes:?}"
        );
        let volume_key = volumes[0].clone();
        let info = node.snapshots.stat(&volume_key).await.expect("Stat");
        assert!(
            info.parent.ends_with(&format!("/{top_layer}")),
            "{name}: the volume's snapshot {volume_key} sits on the image's top layer \
             {top_layer}, not {:?}",
            info.parent
        );
        // containerd keys it by the host path it mounts it on.
        let target = volume_key
            .splitn(3, '/')
            .nth(2)
            .expect("<namespace>/<n>/<key>")
            .to_owned();
        assert!(
            mounted(&target),
            "{name}: containerd mounted the volume at {target}"
        );
        let map = host.map(|h| format!("0:{h}:{RANGE}")).unwrap_or_default();
        assert_eq!(
            mapping_labels(&node.snapshots, &volume_key).await,
            (map.clone(), map.clone()),
            "{name}: the volume snapshot's mapping labels"
        );

        let start = node.start_container(&container).await;
        assert_eq!(
            exited(&node.runtime, &container).await.exit_code,
            0,
            "{name}"
        );
        let lines = log_lines(&log_directory.join("reader/0.log"));
        eprintln!(
            "{name}: CreateContainer with the image volume {create:?}, StartContainer {start:?}: \
             {lines:?}"
        );
        assert_eq!(logged(&lines, "motd").as_deref(), Some("new"), "{lines:?}");
        assert_eq!(
            logged(&lines, "data").as_deref(),
            Some("fresh"),
            "{lines:?}"
        );
        assert_eq!(
            logged(&lines, "owners").as_deref(),
            Some("0:0 0:0"),
            "{name}: the volume's files are root's inside: {lines:?}"
        );
        assert_eq!(
            logged(&lines, "readonly").as_deref(),
            Some("yes"),
            "{name}: {lines:?}"
        );

        let removed = Instant::now();
        let root_key = root[0].clone();
        let sandbox_key = daemon_snapshots(&node.snapshots)
            .await
            .into_iter()
            .map(|(key, _)| key)
            .find(|key| key.contains(&pod))
            .expect("the sandbox's snapshot");
        node.remove_pod(&pod, &[&container], &[sandbox_key, root_key, volume_key])
            .await;
        eventually(&format!("{name}: {target} unmounted"), || async {
            (!mounted(&target)).then_some(())
        })
        .await;
        eprintln!(
            "{name}: the volume's snapshot left the daemon {:?} after the pod's teardown began",
            removed.elapsed()
        );
    }
    eprintln!(
        "image volumes on containerd {}: from rustlayer, read-only, with and without a user \
         namespace; image_sub_path: not in this release's CRI (containerd 2.2 reads it)",
        node.release
    );
}
