//! Between the wire types and the model. Kept apart so the service reads as policy.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustlayer_api::snapshots as pb;
use rustlayer_api::types as pbtypes;
use rustlayer_core::{Info, Kind, Mount, Usage, saturating_i64};

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

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    prost_types::Timestamp {
        seconds: saturating_i64(d.as_secs()),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}
