//! Value strategies the property tests share: zero (invalid) now and then, the usual small
//! values, and values at the extremes of the arithmetic.

use proptest::prelude::*;

/// An account id: 0 (invalid) now and then, else one of `1..=max`.
pub fn account_id(max: u64) -> impl Strategy<Value = u64> {
    prop_oneof![1 => Just(0u64), 40 => 1..=max]
}

/// An amount: mostly small (weight `small` against 1 for 0, `near_max` for the top 80
/// values of u64, 1 for half of it).
pub fn amount(small: u32, near_max: u32) -> impl Strategy<Value = u64> {
    prop_oneof![
        small => 1..60u64,
        1 => Just(0u64),
        near_max => (u64::MAX - 80)..=u64::MAX,
        1 => Just(u64::MAX / 2),
    ]
}

/// A ledger: mostly 1, ledger 2 with weight `second`, now and then 0 (invalid) or 3.
pub fn ledger(second: u32) -> impl Strategy<Value = u32> {
    prop_oneof![1 => Just(0u32), 30 => Just(1u32), second => Just(2u32), 1 => Just(3u32)]
}
