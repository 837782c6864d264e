//! resourceVersions on etcd. Kubernetes clients take a resourceVersion to name one change:
//! a watch resumes after the last version it saw, so two changes sharing a version could
//! lose the second to a broken stream. An etcd revision, though, may hold several keys'
//! writes: the group commit ([`super::batch`]) writes many objects in one transaction. So
//! an object's version is its revision scaled, plus a slot that a stable hash of its key
//! picks: `revision * SLOTS + slot(key)`, and a transaction never holds two keys of one
//! slot. Every API server derives the same version from what etcd returns (a key and its
//! `mod_revision`), whether it read the object or watched its change, and versions keep
//! etcd's order: all of a revision's changes come after the revision before, ordered by
//! slot within it. Decimal keeps them readable: version `12345417` is revision 12345, slot
//! 417.

/// Slots per etcd revision: at most this many keys in one transaction (etcd's own default
/// limit is 128 operations).
pub const SLOTS: u64 = 1000;

/// The version of `key`'s change at etcd `revision`.
pub fn of(revision: u64, key: &str) -> u64 {
    revision.saturating_mul(SLOTS).saturating_add(slot(key))
}

/// The last version of etcd `revision`: what a reader has seen once it has every change of
/// that revision (a list's version, a watch cache's position).
pub fn through(revision: u64) -> u64 {
    revision.saturating_mul(SLOTS).saturating_add(SLOTS - 1)
}

/// The etcd revision a version belongs to.
pub fn revision(version: u64) -> u64 {
    version / SLOTS
}

/// Whether `version` ends its revision (no change of that revision comes after it).
pub fn ends_revision(version: u64) -> bool {
    version % SLOTS == SLOTS - 1
}

/// The slot of `version` within its revision.
pub fn slot_of(version: u64) -> u64 {
    version % SLOTS
}

/// `key`'s slot: FNV-1a, fixed here so that every server (and every release) agrees.
pub fn slot(key: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // The last slot is kept for `through`: no object's version is a revision's end, so an
    // exact read at an object's version is never taken for the whole revision.
    hash % (SLOTS - 1)
}

/// What an update or delete with precondition `version` compares `key`'s `mod_revision`
/// with: its revision, or `-1` (never a `mod_revision`) when the version cannot be `key`'s
/// (its slot is another key's).
pub fn expected_mod_revision(version: u64, key: &str) -> i64 {
    if slot_of(version) == slot(key) {
        i64::try_from(revision(version)).unwrap_or(-1)
    } else {
        -1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_keep_etcds_order_and_name_one_change_each() {
        let (a, b) = ("/registry/pods/default/a", "/registry/pods/default/b");
        assert_ne!(
            slot(a),
            slot(b),
            "these two keys are picked with distinct slots"
        );
        // Every change of revision 7 comes after all of revision 6 and before revision 8.
        for key in [a, b] {
            assert!(of(7, key) > through(6) && of(7, key) < through(7));
            assert_eq!(revision(of(7, key)), 7);
            assert!(
                !ends_revision(of(7, key)),
                "no object takes a revision's last slot"
            );
        }
        assert!(ends_revision(through(7)));
        assert_eq!(through(7), 7999);
        // Stable across releases and servers: a fixed hash, not the process's random one.
        assert_eq!(slot(a), slot(&String::from(a)));
        // FNV-1a of "a" is 0xaf63dc4c8601ec8c, which is 232 modulo 999.
        assert_eq!(slot("a"), 232);
        assert_eq!((slot(a), slot(b)), (464, 818));
        assert_eq!(expected_mod_revision(of(7, a), a), 7);
        assert_eq!(
            expected_mod_revision(of(7, a), b),
            -1,
            "another key's version"
        );
        assert_eq!(of(u64::MAX, a), u64::MAX, "saturates, never wraps");
    }
}
