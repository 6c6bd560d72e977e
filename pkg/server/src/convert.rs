//! Between the wire types and the model. Kept apart so the service reads as policy.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustlayer_api::snapshots as pb;
use rustlayer_api::types as pbtypes;
use rustlayer_core::{Info, Kind, Limits, Measured, Mount, Usage, UsageMethod, saturating_i64};
use tonic::metadata::{MetadataMap, MetadataValue};

pub fn mounts(mounts: Vec<Mount>) -> Vec<pbtypes::Mount> {
    mounts
        .into_iter()
        .map(|m| pbtypes::Mount {
            r#type: m.fs_type,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

pub fn kind(kind: Kind) -> pb::Kind {
    match kind {
        Kind::View => pb::Kind::View,
        Kind::Active => pb::Kind::Active,
        Kind::Committed => pb::Kind::Committed,
    }
}

/// The kind a client reads off the wire; None for a value the API does not define.
pub fn kind_from_pb(kind: i32) -> Option<Kind> {
    match pb::Kind::try_from(kind).ok()? {
        pb::Kind::View => Some(Kind::View),
        pb::Kind::Active => Some(Kind::Active),
        pb::Kind::Committed => Some(Kind::Committed),
        pb::Kind::Unknown => None,
    }
}

pub fn info(info: Info) -> pb::Info {
    pb::Info {
        name: info.name,
        parent: info.parent.unwrap_or_default(),
        kind: kind(info.kind) as i32,
        created_at: Some(timestamp(info.created)),
        updated_at: Some(timestamp(info.updated)),
        labels: info.labels,
    }
}

pub fn usage(usage: Usage) -> pb::UsageResponse {
    pb::UsageResponse {
        size: saturating_i64(usage.bytes),
        inodes: saturating_i64(usage.inodes),
    }
}

/// Response metadata of a Usage answer: how the figure was found, and the limits an
/// active snapshot's writes meet. containerd's `UsageResponse` has no room for them
/// and containerd ignores metadata it does not know, so `rustlayer usage` reads them
/// from here.
pub const USAGE_METHOD_HEADER: &str = "rustlayer-usage-method";
pub const LIMIT_BYTES_HEADER: &str = "rustlayer-limit-bytes";
pub const LIMIT_INODES_HEADER: &str = "rustlayer-limit-inodes";

pub fn usage_details(measured: &Measured, metadata: &mut MetadataMap) {
    metadata.insert(
        USAGE_METHOD_HEADER,
        MetadataValue::from_static(measured.method.as_str()),
    );
    let limits = [
        (LIMIT_BYTES_HEADER, measured.limits.bytes),
        (LIMIT_INODES_HEADER, measured.limits.inodes),
    ];
    for (header, limit) in limits {
        if let Some(limit) = limit {
            metadata.insert(header, MetadataValue::from(limit));
        }
    }
}

/// What [`usage_details`] put in `metadata`: the method (when the daemon sent one)
/// and the limits.
pub fn read_usage_details(metadata: &MetadataMap) -> (Option<UsageMethod>, Limits) {
    let text = |header| metadata.get(header).and_then(|v| v.to_str().ok());
    let number = |header| text(header).and_then(|v| v.parse::<u64>().ok());
    (
        text(USAGE_METHOD_HEADER).and_then(UsageMethod::parse),
        Limits {
            bytes: number(LIMIT_BYTES_HEADER),
            inodes: number(LIMIT_INODES_HEADER),
        },
    )
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    prost_types::Timestamp {
        seconds: saturating_i64(d.as_secs()),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}
