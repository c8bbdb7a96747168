//! Shared helpers for the pipeline tests: temp folders, command builders, a reply collector.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use schemas::ledger::{
    AccountFlags, CommandReplyDecoder, CreateAccountEncoder, DepositEncoder, ResultCode,
    TransferFlags, TransfersEncoder,
};
use sequencer::{OfferError, Pipeline, PipelineConfig, Producer, Replies};

/// A folder under the target dir (a real disk, so O_DIRECT works), removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let base = std::env::var_os("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("{name}-{}-{}", std::process::id(), nanos()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A small configuration for tests: small tables and segments, O_DIRECT when the disk has it.
pub fn test_config(dir: &Path) -> PipelineConfig {
    let mut config = PipelineConfig::new(dir);
    config.journal.segment_size = 1 << 20;
    config.journal.direct_io = journal::DirectIo::Optional;
    config.engine.accounts_max = 10_000;
    config.engine.transfers_retained_max = 100_000;
    config.engine.pending_max = 1_000;
    config.engine.sessions_max = 100;
    config.producers_max = 4;
    config.reply_ring_bytes = 1 << 20;
    config
}

pub fn create_account(id: u64, ledger: u32, no_overdraft: bool) -> Vec<u8> {
    let mut buf = vec![0u8; 64];
    let mut enc = CreateAccountEncoder::wrap_with_header(&mut buf).unwrap();
    enc.set_id(id).set_ledger(ledger);
    enc.set_flags(AccountFlags::empty().with_debits_must_not_exceed_credits(no_overdraft));
    let len = enc.finish().unwrap();
    buf.truncate(len);
    buf
}

/// The ledger's external (world) account, which deposits and withdrawals move money against.
pub fn create_external(id: u64, ledger: u32) -> Vec<u8> {
    let mut buf = vec![0u8; 64];
    let mut enc = CreateAccountEncoder::wrap_with_header(&mut buf).unwrap();
    enc.set_id(id)
        .set_ledger(ledger)
        .set_flags(AccountFlags::empty().with_external(true));
    let len = enc.finish().unwrap();
    buf.truncate(len);
    buf
}

pub fn deposit(transfer_id: u128, account: u64, amount: u64) -> Vec<u8> {
    let mut buf = vec![0u8; 64];
    let mut enc = DepositEncoder::wrap_with_header(&mut buf).unwrap();
    enc.transfer_id_mut()
        .set_lo(transfer_id as u64)
        .set_hi((transfer_id >> 64) as u64);
    enc.set_account_id(account).set_amount(amount);
    let len = enc.finish().unwrap();
    buf.truncate(len);
    buf
}

pub fn transfer(transfer_id: u128, from: u64, to: u64, amount: u64, ledger: u32) -> Vec<u8> {
    let mut buf = vec![0u8; 128];
    let mut enc = TransfersEncoder::wrap_with_header(&mut buf).unwrap();
    {
        let mut group = enc.transfers().unwrap();
        let mut t = group.next_entry().unwrap();
        t.id_mut()
            .set_lo(transfer_id as u64)
            .set_hi((transfer_id >> 64) as u64);
        t.set_debit_account_id(from)
            .set_credit_account_id(to)
            .set_amount(amount);
        t.set_ledger(ledger).set_flags(TransferFlags::empty());
    }
    let len = enc.finish().unwrap();
    buf.truncate(len);
    buf
}

/// Offers until accepted, sleeping while back-pressured (tests never spin).
pub fn offer(producer: &mut Producer, session: u64, seq: u64, command: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match producer.offer(session, seq, command) {
            Ok(()) => return,
            Err(OfferError::BackPressured) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_micros(50))
            }
            Err(e) => panic!("offer failed: {e:?}"),
        }
    }
}

/// One reply as the tests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Got {
    pub session_id: u64,
    pub client_seq: u64,
    /// Log position of the entry (a retry has its own).
    pub position: u64,
    /// Position the reply names: the original one for a retried command.
    pub reply_position: u64,
    pub result: ResultCode,
}

/// Polls until `n` replies arrived (or 30 s passed).
pub fn collect(replies: &mut Replies, n: usize) -> Vec<Got> {
    let mut got = Vec::with_capacity(n);
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < n && Instant::now() < deadline {
        let polled = replies.poll(1024, |r| {
            let decoded = CommandReplyDecoder::wrap_with_header(r.bytes).expect("reply decodes");
            got.push(Got {
                reply_position: decoded.position(),
                session_id: r.session_id,
                client_seq: r.client_seq,
                position: r.position,
                result: decoded.result().expect("known result code"),
            });
        });
        if polled == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    assert_eq!(got.len(), n, "timed out waiting for replies");
    got
}

/// Waits until the pipeline has applied and made durable `position`.
pub fn wait_applied(pipeline: &Pipeline, position: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = pipeline.status();
        assert!(s.fatal.is_none(), "pipeline failed: {:?}", s.fatal);
        if s.applied_position >= position && s.durable_position >= position {
            return;
        }
        assert!(Instant::now() < deadline, "timed out at {s:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}
