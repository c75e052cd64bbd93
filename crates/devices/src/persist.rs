//! Saving and restoring a device's state, for snapshots.
//!
//! Every device implements [`Persist`]: [`Persist::save`] returns a plain, serializable struct
//! with what the guest can observe of the device (registers, FIFOs, queue positions, timers) and
//! nothing of the host (no file descriptors, no paths); [`Persist::restore`] puts such a struct
//! back into a device that was built with the same configuration and fresh backends. The state
//! struct's shape is versioned: [`Persist::STATE_VERSION`] goes up whenever a field is added,
//! removed or changes meaning, and [`Versioned`] carries it next to the state, so a snapshot
//! taken by another build is refused rather than misread.
//!
//! The file format that holds these structs belongs to the snapshot code, not to the devices.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Why a saved state could not be put back.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The state was saved by a build whose state struct had another shape.
    #[error("{device}: saved state has version {found}, this build reads version {expected}")]
    Version {
        /// The device's name.
        device: &'static str,
        /// The version found in the saved state.
        found: u16,
        /// The version this build writes and reads.
        expected: u16,
    },
    /// The state does not fit the device it is restored into (another configuration, or a value
    /// the device can never hold).
    #[error("{device}: saved state does not fit: {why}")]
    Mismatch {
        /// The device's name.
        device: &'static str,
        /// What does not fit, naming the values.
        why: String,
    },
    /// The state fits, but the device's host side could not take it (a descriptor could not be
    /// duplicated, a timer could not be armed, the interrupt routes could not be set).
    #[error("{device}: cannot restore the state: {what}")]
    Backend {
        /// The device's name.
        device: &'static str,
        /// What failed.
        what: &'static str,
        /// The host's error.
        #[source]
        error: std::io::Error,
    },
}

/// Errors compare by variant and values; host errors by their kind and OS error code.
impl PartialEq for PersistError {
    fn eq(&self, other: &Self) -> bool {
        use PersistError::*;
        match (self, other) {
            (
                Version {
                    device: d1,
                    found: f1,
                    expected: e1,
                },
                Version {
                    device: d2,
                    found: f2,
                    expected: e2,
                },
            ) => (d1, f1, e1) == (d2, f2, e2),
            (
                Mismatch {
                    device: d1,
                    why: w1,
                },
                Mismatch {
                    device: d2,
                    why: w2,
                },
            ) => (d1, w1) == (d2, w2),
            (
                Backend {
                    device: d1,
                    what: w1,
                    error: e1,
                },
                Backend {
                    device: d2,
                    what: w2,
                    error: e2,
                },
            ) => (d1, w1, e1.kind(), e1.raw_os_error()) == (d2, w2, e2.kind(), e2.raw_os_error()),
            _ => false,
        }
    }
}

impl Eq for PersistError {}

/// A device whose guest-visible state can be saved and restored.
pub trait Persist {
    /// The device's name in errors (e.g. `"serial"`, `"virtio-blk"`).
    const NAME: &'static str;
    /// The version of [`Persist::State`]'s shape; bump it on any change.
    const STATE_VERSION: u16;
    /// The saved state: plain data, serializable, no host resources.
    type State: Serialize + DeserializeOwned + Clone + std::fmt::Debug + PartialEq;

    /// The device's state now. Called while the VM is paused (no vCPU runs, the event loop is
    /// idle), so the state is consistent.
    fn save(&self) -> Self::State;

    /// Puts `state` back into a device built with the same configuration. Checks what the device
    /// relies on (sizes, indexes, addresses) and refuses a state it could not run with.
    fn restore(&mut self, state: Self::State) -> Result<(), PersistError>;

    /// Brings the device to a state [`Persist::save`] can hold whole, on the event loop while the
    /// VM is paused: a device with host work in flight (an asynchronous backend) finishes it and
    /// returns its chains to the driver. Most devices have nothing to do.
    fn prepare_save(&mut self) {}

    /// [`Persist::save`] with its version, as it is stored.
    fn save_versioned(&self) -> Versioned<Self::State> {
        Versioned {
            version: Self::STATE_VERSION,
            state: self.save(),
        }
    }

    /// [`Persist::restore`] after checking the stored version.
    fn restore_versioned(&mut self, saved: Versioned<Self::State>) -> Result<(), PersistError> {
        if saved.version != Self::STATE_VERSION {
            return Err(PersistError::Version {
                device: Self::NAME,
                found: saved.version,
                expected: Self::STATE_VERSION,
            });
        }
        self.restore(saved.state)
    }
}

/// A device's [`Persist`] behind a trait object, so that the VMM can keep one list of every device
/// to save, in the order they were created, and restore each from its stored form (JSON).
pub trait SaveState: Send {
    /// [`Persist::NAME`].
    fn state_name(&self) -> &'static str;
    /// [`Persist::prepare_save`].
    fn prepare(&mut self);
    /// [`Persist::save_versioned`], as JSON.
    fn save_json(&self) -> Result<serde_json::Value, serde_json::Error>;
    /// [`Persist::restore_versioned`] from JSON; a value of another shape is a
    /// [`PersistError::Mismatch`].
    fn restore_json(&mut self, state: serde_json::Value) -> Result<(), PersistError>;
}

impl<T: Persist + Send> SaveState for T {
    fn state_name(&self) -> &'static str {
        T::NAME
    }

    fn prepare(&mut self) {
        self.prepare_save()
    }

    fn save_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(self.save_versioned())
    }

    fn restore_json(&mut self, state: serde_json::Value) -> Result<(), PersistError> {
        let saved: Versioned<T::State> =
            serde_json::from_value(state).map_err(|e| PersistError::Mismatch {
                device: T::NAME,
                why: format!("the saved state has another shape: {e}"),
            })?;
        self.restore_versioned(saved)
    }
}

/// A saved state with the version of its shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Versioned<S> {
    /// [`Persist::STATE_VERSION`] of the build that saved it.
    pub version: u16,
    /// The state itself.
    pub state: S,
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;
    use std::time::Instant;

    /// A device whose saved state depends on the time: it saves and restores as of a given
    /// instant, so that a test can freeze the clock ([`Frozen`]).
    pub(crate) trait Clocked: Persist {
        fn save_at(&self, now: Instant) -> Self::State;
        fn restore_at(&mut self, state: Self::State, now: Instant) -> Result<(), PersistError>;
    }

    /// A [`Clocked`] device whose clock stands still at `.1`, for [`round_trip`].
    pub(crate) struct Frozen<D>(pub D, pub Instant);

    impl<D: Clocked> Persist for Frozen<D> {
        const NAME: &'static str = D::NAME;
        const STATE_VERSION: u16 = D::STATE_VERSION;
        type State = D::State;

        fn save(&self) -> D::State {
            self.0.save_at(self.1)
        }

        fn restore(&mut self, state: D::State) -> Result<(), PersistError> {
            self.0.restore_at(state, self.1)
        }
    }

    /// Saves `device`, sends the state through JSON (as a snapshot file would hold it), restores it
    /// into `fresh` and checks that `fresh` then saves the same state.
    pub(crate) fn round_trip<D: Persist>(device: &D, fresh: &mut D) -> D::State {
        let saved = device.save_versioned();
        let text = serde_json::to_string(&saved).expect("state serializes");
        let back: Versioned<D::State> = serde_json::from_str(&text).expect("state deserializes");
        assert_eq!(back, saved, "{}: state changed through serde", D::NAME);
        fresh
            .restore_versioned(back)
            .unwrap_or_else(|e| panic!("{}: restore failed: {e}", D::NAME));
        let again = fresh.save();
        assert_eq!(
            again,
            saved.state,
            "{}: restored device saves another state",
            D::NAME
        );
        again
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::round_trip;
    use super::*;

    #[derive(Default)]
    struct Counter(u32);

    impl Persist for Counter {
        const NAME: &'static str = "counter";
        const STATE_VERSION: u16 = 3;
        type State = u32;

        fn save(&self) -> u32 {
            self.0
        }

        fn restore(&mut self, state: u32) -> Result<(), PersistError> {
            if state > 100 {
                return Err(PersistError::Mismatch {
                    device: Self::NAME,
                    why: format!("count {state} is above 100"),
                });
            }
            self.0 = state;
            Ok(())
        }
    }

    #[test]
    fn round_trip_restores_the_same_state() {
        assert_eq!(round_trip(&Counter(42), &mut Counter::default()), 42);
    }

    #[test]
    fn another_version_is_refused_and_changes_nothing() {
        let mut fresh = Counter(7);
        let err = fresh
            .restore_versioned(Versioned {
                version: 2,
                state: 42,
            })
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "counter: saved state has version 2, this build reads version 3"
        );
        assert_eq!(fresh.0, 7);
    }

    #[test]
    fn a_state_that_does_not_fit_is_refused() {
        let mut fresh = Counter(7);
        assert!(matches!(
            fresh.restore_versioned(Counter(101).save_versioned()),
            Err(PersistError::Mismatch { .. })
        ));
        assert_eq!(fresh.0, 7);
    }
}
