//! A [`DeviceMapper`] that keeps device-mapper's state in memory (active devices,
//! the pool's thin ids) and records every call that changes it, so the backend's
//! sequencing is tested without root. It refuses what the kernel refuses (a name
//! taken twice, a thin id created twice, removing an open device) and what dm-thin
//! requires callers never do: snapshotting an origin that is active and not
//! suspended.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use devicemapper::{Device, DmError, errors};

use crate::dm::{Deactivated, DeviceMapper};
use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DmCall {
    Activate { device: String, read_only: bool },
    Deactivate(String),
    Suspend(String),
    Resume(String),
    Message { device: String, message: String },
}

#[derive(Debug)]
struct Active {
    number: Device,
    open: i32,
    suspended: bool,
    sectors: u64,
    target: String,
    params: String,
    status: String,
}

#[derive(Debug, Default)]
struct State {
    devices: BTreeMap<String, Active>,
    thins: BTreeSet<u32>,
    calls: Vec<DmCall>,
    next_minor: u32,
}

#[derive(Debug, Clone, Default)]
pub struct RecordingDm {
    state: Arc<Mutex<State>>,
}

/// A failed ioctl with `errno`, as the `devicemapper` crate reports one.
pub fn ioctl_error(context: &str, errno: i32) -> Error {
    let errno = Box::new(nix::errno::Errno::from_raw(errno));
    Error::dm(
        context,
        DmError::Core(errors::Error::Ioctl(0, None, None, errno)),
    )
}

impl RecordingDm {
    /// A fake with an active thin pool `name` of 64 KiB blocks, `used` of
    /// `total` data blocks used.
    pub fn with_pool(name: &str, used: u64, total: u64) -> RecordingDm {
        let dm = RecordingDm::default();
        dm.activate(
            name,
            total * 128,
            "thin-pool",
            "7:1 7:0 128 10 1 error_if_no_space",
            false,
        )
        .expect("the pool activates");
        dm.set_pool_usage(name, used, total);
        dm.forget_calls();
        dm
    }

    pub fn set_pool_usage(&self, name: &str, used: u64, total: u64) {
        let mut state = self.lock();
        let pool = state.devices.get_mut(name).expect("the pool is active");
        pool.status =
            format!("1 10/1000 {used}/{total} - rw discard_passdown error_if_no_space - 0");
    }

    /// The pool as the kernel reports it once an allocation found no free block.
    pub fn set_pool_out_of_data_space(&self, name: &str) {
        let mut state = self.lock();
        let pool = state.devices.get_mut(name).expect("the pool is active");
        let total = pool.sectors / 128;
        pool.status = format!(
            "1 10/1000 {total}/{total} - out_of_data_space discard_passdown error_if_no_space - 0"
        );
    }

    /// A thin id the pool has already, as left by an earlier run.
    pub fn add_thin(&self, id: u32) {
        self.lock().thins.insert(id);
    }

    pub fn has_thin(&self, id: u32) -> bool {
        self.lock().thins.contains(&id)
    }

    /// Marks an active device as held open (mounted), or released.
    pub fn set_open(&self, device: &str, open: i32) {
        self.lock()
            .devices
            .get_mut(device)
            .expect("the device is active")
            .open = open;
    }

    /// The size an active device's table gives it.
    pub fn sectors(&self, device: &str) -> Option<u64> {
        self.lock().devices.get(device).map(|active| active.sectors)
    }

    pub fn is_active(&self, device: &str) -> bool {
        self.lock().devices.contains_key(device)
    }

    pub fn calls(&self) -> Vec<DmCall> {
        self.lock().calls.clone()
    }

    pub fn forget_calls(&self) {
        self.lock().calls.clear();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        rustlayer_core::sync::lock(&self.state)
    }
}

impl State {
    /// The active, unsuspended thin device over `id`, if any.
    fn running_thin(&self, id: u32) -> Option<&str> {
        self.devices.iter().find_map(|(name, active)| {
            let maps_id = active.target == "thin"
                && active.params.split_whitespace().nth(1) == Some(&id.to_string());
            (maps_id && !active.suspended).then_some(name.as_str())
        })
    }

    fn pool_message(&mut self, device: &str, message: &str) -> Result<()> {
        let words: Vec<&str> = message.split_whitespace().collect();
        let id = |n: usize| -> Result<u32> {
            words
                .get(n)
                .and_then(|w| w.parse().ok())
                .ok_or_else(|| ioctl_error(message, libc::EINVAL))
        };
        match words.first().copied() {
            Some("create_thin") => {
                if !self.thins.insert(id(1)?) {
                    return Err(ioctl_error(message, libc::EEXIST));
                }
            }
            Some("create_snap") => {
                let (new, origin) = (id(1)?, id(2)?);
                if !self.thins.contains(&origin) {
                    return Err(ioctl_error(message, libc::ENODATA));
                }
                if let Some(running) = self.running_thin(origin) {
                    panic!(
                        "{message} to {device} while origin {running} is active and not suspended"
                    );
                }
                if !self.thins.insert(new) {
                    return Err(ioctl_error(message, libc::EEXIST));
                }
            }
            Some("delete") => {
                if !self.thins.remove(&id(1)?) {
                    return Err(ioctl_error(message, libc::ENODATA));
                }
            }
            _ => return Err(ioctl_error(message, libc::EINVAL)),
        }
        Ok(())
    }
}

impl DeviceMapper for RecordingDm {
    fn device(&self, device: &str) -> Result<Option<(Device, i32)>> {
        Ok(self
            .lock()
            .devices
            .get(device)
            .map(|active| (active.number, active.open)))
    }

    fn activate(
        &self,
        device: &str,
        sectors: u64,
        target: &str,
        params: &str,
        read_only: bool,
    ) -> Result<Device> {
        let mut state = self.lock();
        state.calls.push(DmCall::Activate {
            device: device.to_owned(),
            read_only,
        });
        if state.devices.contains_key(device) {
            return Err(ioctl_error(&format!("create {device}"), libc::EEXIST));
        }
        let number = Device {
            major: 253,
            minor: state.next_minor,
        };
        state.next_minor += 1;
        state.devices.insert(
            device.to_owned(),
            Active {
                number,
                open: 0,
                suspended: false,
                sectors,
                target: target.to_owned(),
                params: params.to_owned(),
                status: "0 -".to_owned(),
            },
        );
        Ok(number)
    }

    fn deactivate(&self, device: &str) -> Result<Deactivated> {
        let mut state = self.lock();
        state.calls.push(DmCall::Deactivate(device.to_owned()));
        match state.devices.get(device) {
            None => Ok(Deactivated::Absent),
            Some(active) if active.open > 0 => Ok(Deactivated::Busy),
            Some(_) => {
                state.devices.remove(device);
                Ok(Deactivated::Done)
            }
        }
    }

    fn suspend(&self, device: &str) -> Result<()> {
        let mut state = self.lock();
        state.calls.push(DmCall::Suspend(device.to_owned()));
        match state.devices.get_mut(device) {
            Some(active) => {
                active.suspended = true;
                Ok(())
            }
            None => Err(ioctl_error(&format!("suspend {device}"), libc::ENXIO)),
        }
    }

    fn resume(&self, device: &str) -> Result<()> {
        let mut state = self.lock();
        state.calls.push(DmCall::Resume(device.to_owned()));
        match state.devices.get_mut(device) {
            Some(active) => {
                active.suspended = false;
                Ok(())
            }
            None => Err(ioctl_error(&format!("resume {device}"), libc::ENXIO)),
        }
    }

    fn message(&self, device: &str, message: &str) -> Result<()> {
        let mut state = self.lock();
        state.calls.push(DmCall::Message {
            device: device.to_owned(),
            message: message.to_owned(),
        });
        match state.devices.get(device) {
            Some(active) if active.target == "thin-pool" => state.pool_message(device, message),
            _ => Err(ioctl_error(&format!("message to {device}"), libc::ENXIO)),
        }
    }

    fn status(&self, device: &str, table: bool) -> Result<(String, String)> {
        let state = self.lock();
        let active = state
            .devices
            .get(device)
            .ok_or_else(|| ioctl_error(&format!("status of {device}"), libc::ENXIO))?;
        let line = if table {
            &active.params
        } else {
            &active.status
        };
        Ok((active.target.clone(), line.clone()))
    }

    fn names_with_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .lock()
            .devices
            .keys()
            .filter(|name| name.starts_with(prefix))
            .cloned()
            .collect())
    }
}
