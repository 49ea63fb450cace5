//! Per-CPU counters: by reason, and by network and direction.

use aya_ebpf::bindings::{TC_ACT_OK, TC_ACT_SHOT};

use crate::maps::{NET_STATS, STATS};

#[inline(always)]
pub fn count(reason: u32, bytes: u32) {
    if let Some(c) = STATS.get_ptr_mut(reason) {
        unsafe {
            (*c).packets += 1;
            (*c).bytes += u64::from(bytes);
        }
    }
}

/// Counts and drops.
#[inline(always)]
pub fn drop(reason: u32, bytes: u32) -> i32 {
    count(reason, bytes);
    TC_ACT_SHOT
}

/// Counts and hands the packet to the kernel unchanged.
#[inline(always)]
pub fn pass(reason: u32, bytes: u32) -> i32 {
    count(reason, bytes);
    TC_ACT_OK
}

#[inline(always)]
pub fn count_from_guests(bridge_ifindex: u32, bytes: u32) {
    if let Some(s) = NET_STATS.get_ptr_mut(&bridge_ifindex) {
        unsafe {
            (*s).from_guests.packets += 1;
            (*s).from_guests.bytes += u64::from(bytes);
        }
    }
}

#[inline(always)]
pub fn count_to_guests(bridge_ifindex: u32, bytes: u32) {
    if let Some(s) = NET_STATS.get_ptr_mut(&bridge_ifindex) {
        unsafe {
            (*s).to_guests.packets += 1;
            (*s).to_guests.bytes += u64::from(bytes);
        }
    }
}
