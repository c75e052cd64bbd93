//! The saved state of a virtio-fs device, and why it is not restored.
//!
//! What a guest holds of a share (FUSE node ids, open file handles, the kernel's caches of
//! them) refers to state in the server process: its table of inodes and open files. No snapshot
//! carries that table, and a new server would not know those ids, so a restored guest would get
//! errors on every file it had looked up. The VM refuses to snapshot while it shares
//! directories; should a state of this device reach a restore anyway, it is refused too.

use serde::{Deserialize, Serialize};

use super::Fs;
use crate::persist::{Persist, PersistError};
use crate::virtio::CoreState;

/// What a virtio-fs device saves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsState {
    /// Activation, accepted features, queue positions.
    pub core: CoreState,
    /// The share's tag.
    pub tag: String,
}

impl Persist for Fs {
    const NAME: &'static str = "virtio-fs";
    const STATE_VERSION: u16 = 1;
    type State = FsState;

    fn save(&self) -> FsState {
        FsState {
            core: self.core.save(),
            tag: self.tag().to_string(),
        }
    }

    fn restore(&mut self, state: FsState) -> Result<(), PersistError> {
        Err(PersistError::Mismatch {
            device: Self::NAME,
            why: format!(
                "share '{}': its server's open files and node ids are not in a snapshot",
                state.tag
            ),
        })
    }
}
