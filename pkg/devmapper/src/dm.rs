//! The device-mapper calls the backend makes, behind [`DeviceMapper`] so the
//! backend's sequencing (suspending an active origin around a snapshot, replacing
//! stale devices, cleanup, shutdown) is unit-tested without root against a
//! recording fake. The real implementation goes through the `devicemapper` crate's
//! ioctl interface (no dmsetup), with errors reduced to what callers decide on.
//!
//! The trait lives here, not in the mount crate: that crate holds the project's
//! unsafe and raw ioctl code, and the `devicemapper` crate is a safe API already, so
//! nothing here needs unsafe; only the loop devices under a self-managed pool (raw
//! ioctls) come from the mount crate.

use devicemapper::{DM, DevId, Device, DmFlags, DmName, DmNameBuf, DmOptions};

use crate::error::{Error, Result, dm_errno as errno};

/// Whether a device could be deactivated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deactivated {
    Done,
    /// It was not active.
    Absent,
    /// Something still has it open (a mount).
    Busy,
}

/// What the backend and pool ask of device-mapper, by device name.
pub trait DeviceMapper: Send + Sync {
    /// The device number and open count of an active device, or None.
    fn device(&self, device: &str) -> Result<Option<(Device, i32)>>;
    fn activate(
        &self,
        device: &str,
        sectors: u64,
        target: &str,
        params: &str,
        read_only: bool,
    ) -> Result<Device>;
    fn deactivate(&self, device: &str) -> Result<Deactivated>;
    fn suspend(&self, device: &str) -> Result<()>;
    fn resume(&self, device: &str) -> Result<()>;
    fn message(&self, device: &str, message: &str) -> Result<()>;
    /// The single target's (type, status line), or its table line with `table`.
    fn status(&self, device: &str, table: bool) -> Result<(String, String)>;
    fn names_with_prefix(&self, prefix: &str) -> Result<Vec<String>>;
}

/// Device-mapper through /dev/mapper/control.
pub struct Dm {
    dm: DM,
}

impl std::fmt::Debug for Dm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dm")
    }
}

fn name(text: &str) -> Result<&DmName> {
    DmName::new(text).map_err(|err| Error::dm(format!("device name {text:?}"), err))
}

/// No udev rules run for our devices: nodes come from devtmpfs (`/dev/dm-N`), and a
/// node without udev present must not wait for a udev cookie.
fn options() -> DmOptions {
    DmOptions::private()
}

impl Dm {
    pub fn open() -> Result<Dm> {
        let dm = DM::new().map_err(|err| Error::dm("open /dev/mapper/control", err))?;
        Ok(Dm { dm })
    }
}

impl DeviceMapper for Dm {
    fn device(&self, device: &str) -> Result<Option<(Device, i32)>> {
        match self.dm.device_info(&DevId::Name(name(device)?)) {
            Ok(info) => Ok(Some((info.device(), info.open_count()))),
            Err(err) if errno(&err) == Some(libc::ENXIO) => Ok(None),
            Err(err) => Err(Error::dm(format!("query {device}"), err)),
        }
    }

    fn activate(
        &self,
        device: &str,
        sectors: u64,
        target: &str,
        params: &str,
        read_only: bool,
    ) -> Result<Device> {
        let id = DevId::Name(name(device)?);
        let created = self
            .dm
            .device_create(name(device)?, None, options())
            .map_err(|err| Error::dm(format!("create {device}"), err))?;
        let flags = if read_only {
            DmFlags::DM_READONLY
        } else {
            DmFlags::empty()
        };
        let table = [(0, sectors, target.to_owned(), params.to_owned())];
        let loaded = self
            .dm
            .table_load(&id, &table, options().set_flags(flags))
            .and_then(|_| self.dm.device_suspend(&id, options()));
        if let Err(err) = loaded {
            // A device without a live table is useless and would block the name.
            let _ = self.dm.device_remove(&id, options());
            return Err(Error::dm(format!("load {target} table for {device}"), err));
        }
        Ok(created.device())
    }

    fn deactivate(&self, device: &str) -> Result<Deactivated> {
        let id = DevId::Name(name(device)?);
        match self.device(device)? {
            None => return Ok(Deactivated::Absent),
            Some((_, open)) if open > 0 => return Ok(Deactivated::Busy),
            Some(_) => {}
        }
        match self.dm.device_remove(&id, options()) {
            Ok(_) => Ok(Deactivated::Done),
            Err(err) if errno(&err) == Some(libc::ENXIO) => Ok(Deactivated::Absent),
            Err(err) if errno(&err) == Some(libc::EBUSY) => Ok(Deactivated::Busy),
            Err(err) => Err(Error::dm(format!("remove {device}"), err)),
        }
    }

    fn suspend(&self, device: &str) -> Result<()> {
        self.dm
            .device_suspend(
                &DevId::Name(name(device)?),
                options().set_flags(DmFlags::DM_SUSPEND),
            )
            .map(|_| ())
            .map_err(|err| Error::dm(format!("suspend {device}"), err))
    }

    fn resume(&self, device: &str) -> Result<()> {
        self.dm
            .device_suspend(&DevId::Name(name(device)?), options())
            .map(|_| ())
            .map_err(|err| Error::dm(format!("resume {device}"), err))
    }

    fn message(&self, device: &str, message: &str) -> Result<()> {
        self.dm
            .target_msg(&DevId::Name(name(device)?), None, message)
            .map(|_| ())
            .map_err(|err| Error::dm(format!("message {message:?} to {device}"), err))
    }

    fn status(&self, device: &str, table: bool) -> Result<(String, String)> {
        let flags = if table {
            DmFlags::DM_STATUS_TABLE
        } else {
            DmFlags::empty()
        };
        let (_, targets) = self
            .dm
            .table_status(&DevId::Name(name(device)?), options().set_flags(flags))
            .map_err(|err| Error::dm(format!("status of {device}"), err))?;
        match targets.into_iter().next() {
            Some((_, _, target, params)) => Ok((target, params)),
            None => Err(Error::Pool(format!("{device} has no table loaded"))),
        }
    }

    fn names_with_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        let devices = self
            .dm
            .list_devices()
            .map_err(|err| Error::dm("list devices", err))?;
        Ok(devices
            .into_iter()
            .map(|(name, _, _): (DmNameBuf, _, _)| name.to_string())
            .filter(|name| name.starts_with(prefix))
            .collect())
    }
}
