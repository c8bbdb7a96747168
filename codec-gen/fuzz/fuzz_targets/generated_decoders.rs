//! Arbitrary bytes through the generated decoders of `schemas::ledger` and of codec-gen's
//! `constructs` test schema: every accessor of whatever decodes is called; nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sbe_conformance::local::constructs as c;
use schemas::ledger::{self, Decoded};

type R<T> = Result<T, codec_gen::runtime::DecodeError>;

fn ledger_walk(buf: &[u8]) -> R<usize> {
    match ledger::decode(buf)? {
        Decoded::Transfers(d) => {
            let _ = d.flags();
            for t in d.transfers()? {
                let _ = (
                    t.id().lo(),
                    t.id().hi(),
                    t.debit_account_id(),
                    t.credit_account_id(),
                    t.amount(),
                );
                let _ = (t.ledger(), t.flags(), t.code(), t.timeout_s());
            }
            let g = d.transfers()?;
            let _ = g.get(g.count().saturating_sub(1)).map(|t| t.amount());
            d.encoded_length()
        }
        Decoded::CommandReply(d) => {
            let _ = (d.position(), d.result(), d.result_raw());
            for r in d.results()? {
                let _ = r.result();
            }
            for b in d.balances()? {
                let _ = (b.account_id(), b.credits_pending());
            }
            d.encoded_length()
        }
        Decoded::AccountsPage(d) => {
            for a in d.accounts()? {
                let _ = (a.id(), a.flags(), a.debits_posted());
            }
            d.encoded_length()
        }
        Decoded::StatusReply(d) => {
            let _ = (d.role(), d.position());
            d.node_name()?;
            d.encoded_length()
        }
        Decoded::PostPending(d) => {
            let _ = (d.id().lo(), d.pending_id().hi(), d.amount());
            d.encoded_length()
        }
        Decoded::ListAccounts(d) => {
            let _ = (d.ledger(), d.after_id(), d.limit());
            d.encoded_length()
        }
        other => {
            let _ = format!("{other:?}");
            Ok(0)
        }
    }
}

fn constructs_walk(buf: &[u8]) -> R<usize> {
    match c::decode(buf)? {
        c::Decoded::Everything(d) => {
            let _ = (
                d.id(),
                d.symbol(),
                d.side(),
                d.level(),
                d.flags(),
                d.price(),
                d.qty(),
                d.ratio(),
                d.weights(),
            );
            let _ = (
                d.stamp().unit(),
                d.stamp().spare(),
                d.extra(),
                d.extra2(),
                d.f32(),
                d.type_(),
            );
            for l in d.legs()? {
                let l = l?;
                let _ = (l.leg_id(), l.side());
                for f in l.fills()? {
                    let f = f?;
                    let _ = (f.px().mantissa(), f.qty(), f.venue_note()?);
                }
                l.leg_note()?;
            }
            let _ = d
                .tags()?
                .fold(0u64, |a, t| a.wrapping_add(u64::from(t.tag())));
            let _ = d.later()?.fold(0u64, |a, t| a.wrapping_add(t.value()));
            d.note()?;
            d.blob()?;
            d.later_note()?;
            d.encoded_length()
        }
        c::Decoded::Empty(d) => d.encoded_length(),
        c::Decoded::OnlyData(d) => {
            d.payload()?;
            d.encoded_length()
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The ledger's schema id is 7001 and the test schema's 900: patch the header's schema id so
    // that most inputs reach the message bodies of both.
    let mut buf = data.to_vec();
    if buf.len() >= 6 {
        buf[4..6].copy_from_slice(&7001u16.to_le_bytes());
        if let Ok(len) = ledger_walk(&buf) {
            assert!(len <= buf.len());
        }
        buf[4..6].copy_from_slice(&900u16.to_le_bytes());
        if let Ok(len) = constructs_walk(&buf) {
            assert!(len <= buf.len());
        }
    }
    let _ = ledger_walk(data);
});
