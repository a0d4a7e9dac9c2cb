//! IA32_TSC as KVM treats a host write of it: what a store writes and how a load finds out that
//! the host ignored the write. The reasons are in the `msrs.rs` module documentation (the
//! `# IA32_TSC` section); this file is the policy, free of ioctls, with its tests.

/// What a host write of IA32_TSC means to KVM: 0 asks it to synchronise the vCPU with the VM's
/// other vCPUs instead of setting the counter, so a 0 is written as 1.
pub(super) fn tsc_to_write(value: u64) -> u64 {
    value.max(1)
}

/// The fastest a TSC is taken to count: 10 GHz, in cycles per nanosecond.
const TSC_MAX_CYCLES_PER_NS: u128 = 10;
/// KVM matches a host TSC write to the VM's current TSC when it is within one second of it.
const KVM_TSC_MATCH_WINDOW_NS: u128 = 1_000_000_000;

/// Whether a TSC read of `read`, `elapsed_ns` after `written` was written, can have followed
/// from that write: it counted on at up to 10 GHz, or KVM matched the write to the VM's
/// current TSC, which is within one second of it.
fn tsc_followed(written: u64, read: u64, elapsed_ns: u128) -> bool {
    let window = KVM_TSC_MATCH_WINDOW_NS * TSC_MAX_CYCLES_PER_NS;
    let low = u128::from(written).saturating_sub(window);
    let high = u128::from(written) + (elapsed_ns + KVM_TSC_MATCH_WINDOW_NS) * TSC_MAX_CYCLES_PER_NS;
    (low..=high).contains(&u128::from(read))
}

/// What the backend knows about IA32_TSC (see the `msrs.rs` module documentation).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct TscState {
    /// The value last loaded or stored since the last run (as the state has it, before
    /// [`tsc_to_write`]).
    last: Option<u64>,
    /// The value last written and when, until the next load or run checks it.
    written: Option<(u64, std::time::Instant)>,
    /// The host accepts TSC writes but ignores them.
    pub(super) ignored: bool,
}

impl TscState {
    /// Whether a store of a state whose TSC is `value` writes IA32_TSC.
    pub(super) fn writes(&self, value: u64) -> bool {
        !self.ignored && self.last != Some(value)
    }

    /// `value` was written (as [`tsc_to_write`] of it).
    pub(super) fn stored(&mut self, value: u64) {
        self.last = Some(value);
        self.written = Some((tsc_to_write(value), std::time::Instant::now()));
    }

    /// A load read `read`: check a pending write against it. Returns whether the load reports
    /// the value (it does unless the field was already known not to be held).
    pub(super) fn loaded(&mut self, read: u64) -> bool {
        if self.ignored {
            return false;
        }
        if let Some((written, at)) = self.written.take()
            && !tsc_followed(written, read, at.elapsed().as_nanos())
        {
            self.ignored = true;
        }
        self.last = Some(read);
        true
    }

    /// A KVM_RUN happened: the counter moved on (and the guest may have written it), so the
    /// last value is no longer what it holds and a pending write can no longer be checked.
    pub(super) fn ran(&mut self) {
        self.last = None;
        self.written = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tsc_of_zero_is_written_as_one() {
        assert_eq!(tsc_to_write(0), 1);
        assert_eq!(tsc_to_write(1), 1);
        assert_eq!(tsc_to_write(0x1234_5678), 0x1234_5678);
    }

    #[test]
    fn the_tsc_is_written_only_when_it_changes() {
        let mut t = TscState::default();
        assert!(t.writes(0), "nothing known yet");
        t.stored(0);
        assert!(
            !t.writes(0),
            "0 was just written: writing it again would restart the count"
        );
        assert!(t.writes(5));
        assert!(t.loaded(1), "the counter went on from the 1 written");
        assert!(!t.ignored);
        assert!(!t.writes(1), "a value read is never written back");
        t.ran();
        assert!(
            t.writes(0),
            "after a run the counter has moved on: RESET writes it again"
        );
        assert!(t.writes(1));
    }

    #[test]
    fn a_host_that_ignores_tsc_writes_is_found_out_by_the_next_load() {
        let mut t = TscState::default();
        t.stored(0);
        assert!(
            t.loaded(0x81b_6154_0a7e),
            "the load that finds out still reports what it read"
        );
        assert!(t.ignored, "the count did not restart");
        assert!(!t.writes(0) && !t.writes(7), "nothing is written any more");
        assert!(!t.loaded(0x81b_6160_0000));
        // A run between the write and the load: the guest may have written the TSC itself.
        let mut t = TscState::default();
        t.stored(0);
        t.ran();
        assert!(t.loaded(0x81b_6154_0a7e));
        assert!(!t.ignored);
    }

    #[test]
    fn a_tsc_read_follows_a_write_by_counting_or_by_kvm_matching() {
        // Counting on from the write, at up to 10 GHz.
        assert!(tsc_followed(1, 1, 0));
        assert!(tsc_followed(1, 3_000_000, 1_000_000));
        assert!(tsc_followed(1, 100_000_000_000, 9_000_000_000));
        // KVM matched the write to the VM's TSC, within a second of it either way.
        assert!(tsc_followed(20_000_000_000, 11_000_000_000, 0));
        assert!(tsc_followed(1, 9_000_000_000, 0));
        // A host that ignored the write: the counter is where it was (here ~an hour at 2.3 GHz).
        assert!(!tsc_followed(1, 0x81b_6154_0a7e, 50_000));
        assert!(!tsc_followed(0x1_0000_0000_0000, 0x81b_615a_2c02, 50_000));
    }
}
