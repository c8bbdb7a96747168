//! What the fuzz targets share (each includes it with `#[path]`): the input reader and the
//! engine's tables.
#![allow(dead_code)] // each target uses some of it

use engine::EngineConfig;

/// Tiny tables, so that every one fills, wraps and evicts within a short input.
pub const CONFIG: EngineConfig = EngineConfig {
    accounts_max: 12,
    transfers_retained_max: 24,
    pending_max: 6,
    sessions_max: 3,
    ledgers_max: 2,
};

/// The input, read front to back; reads past its end give zeros.
pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for v in &mut b {
            *v = self.u8();
        }
        u64::from_le_bytes(b)
    }

    pub fn bytes(&mut self, n: usize) -> &[u8] {
        let (taken, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        taken
    }
}
