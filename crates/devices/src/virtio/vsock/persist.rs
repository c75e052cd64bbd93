//! The saved state of a virtio-vsock device: the core's queue positions and the guest's CID.
//! Connections are not saved: their host ends do not survive the VMM. The restored device has
//! none, and if the saved one had any it sends the guest a transport-reset event (virtio 1.2,
//! 5.10.6.5), as a migrated guest gets: its driver resets every connected socket; listening
//! sockets stay. With no connection saved there is nothing to reset, and no event races the
//! host's first new connections (which a late reset would cut).

use serde::{Deserialize, Serialize};

use super::{Vsock, EVENT_QUEUE};
use crate::persist::{Persist, PersistError};
use crate::virtio::CoreState;

/// What a virtio-vsock device saves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    /// Activation, accepted features, queue positions.
    pub core: CoreState,
    /// The guest's CID.
    pub cid: u64,
    /// Connections whose host end was open when saved (reset on restore; one the host had
    /// closed is only waiting for the guest to close its end).
    #[serde(default)]
    pub connections: usize,
}

impl Persist for Vsock {
    const NAME: &'static str = "virtio-vsock";
    const STATE_VERSION: u16 = 1;
    type State = VsockState;

    fn save(&self) -> VsockState {
        VsockState {
            core: self.core.save(),
            cid: self.cid(),
            connections: self.muxer.live(),
        }
    }

    fn restore(&mut self, state: VsockState) -> Result<(), PersistError> {
        if state.cid != self.cid() {
            return Err(PersistError::Mismatch {
                device: Self::NAME,
                why: format!("saved CID {}, this device has {}", state.cid, self.cid()),
            });
        }
        // Every chain is served as it is taken: none is held.
        state.core.check_held(Self::NAME, &[0, 0, 0])?;
        self.muxer.reset();
        self.core.restore(state.core)?;
        // Sent from the event loop, once it watches the queue.
        if state.connections > 0 {
            self.reset_owed = true;
            self.core.kick(EVENT_QUEUE);
        }
        Ok(())
    }
}
