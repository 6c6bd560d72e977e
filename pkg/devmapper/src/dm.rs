//! The device-mapper calls the backend makes, through the `devicemapper` crate's
//! ioctl interface (no dmsetup), with errors reduced to what callers decide on.

use devicemapper::{DM, DevId, Device, DmError, DmFlags, DmName, DmNameBuf, DmOptions, errors};

use crate::error::{Error, Result};

/// Whether a device could be deactivated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deactivated {
    Done,
    /// It was not active.
    Absent,
    /// Something still has it open (a mount).
    Busy,
}

pub struct Dm {
    dm: DM,
}

impl std::fmt::Debug for Dm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dm")
    }
}

/// The errno behind a failed ioctl, if that is what failed.
pub fn errno(err: &DmError) -> Option<i32> {
    match err {
        DmError::Core(errors::Error::Ioctl(_, _, _, errno)) => Some(**errno as i32),
        _ => None,
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

    /// The device number of an active device, or None.
    pub fn device(&self, device: &str) -> Result<Option<(Device, i32)>> {
        match self.dm.device_info(&DevId::Name(name(device)?)) {
            Ok(info) => Ok(Some((info.device(), info.open_count()))),
            Err(err) if errno(&err) == Some(libc::ENXIO) => Ok(None),
            Err(err) => Err(Error::dm(format!("query {device}"), err)),
        }
    }

    /// Creates and resumes a device with a one-target table.
    pub fn activate(
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

    pub fn deactivate(&self, device: &str) -> Result<Deactivated> {
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

    pub fn suspend(&self, device: &str) -> Result<()> {
        self.dm
            .device_suspend(
                &DevId::Name(name(device)?),
                options().set_flags(DmFlags::DM_SUSPEND),
            )
            .map(|_| ())
            .map_err(|err| Error::dm(format!("suspend {device}"), err))
    }

    pub fn resume(&self, device: &str) -> Result<()> {
        self.dm
            .device_suspend(&DevId::Name(name(device)?), options())
            .map(|_| ())
            .map_err(|err| Error::dm(format!("resume {device}"), err))
    }

    /// Sends a message to a target (thin-pool: create_thin, create_snap, delete).
    pub fn message(&self, device: &str, message: &str) -> Result<()> {
        self.dm
            .target_msg(&DevId::Name(name(device)?), None, message)
            .map(|_| ())
            .map_err(|err| Error::dm(format!("message {message:?} to {device}"), err))
    }

    /// The single target's status line, or its table line with `table`.
    pub fn status(&self, device: &str, table: bool) -> Result<(String, String)> {
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

    /// Names of all active devices starting with `prefix`.
    pub fn names_with_prefix(&self, prefix: &str) -> Result<Vec<String>> {
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
