//! `tally client`: send one command or query to a node and print its reply.
//!
//! Owns: the `client` subcommand's arguments ([`ClientArgs`]), their mapping to
//! [`client::Request`]s, the printing of replies (one JSON object per reply with `--json`, a
//! short line otherwise) and the exit status:
//!
//! | status | meaning |
//! |---|---|
//! | 0 | the result is `ok` |
//! | 1 | a business rejection: the result code is printed (`insufficient_funds`, `account_exists`, ...) |
//! | 2 | usage, connection or timeout error, or `busy`/`not_ready` through every retry: the message on stderr says what to do |
//!
//! Decisions:
//! - `create-account` without `--flags` sets `debits_must_not_exceed_credits` (no overdraft);
//!   `--flags` replaces that default with exactly the flags listed (`overdraft` = no balance
//!   rule). Flags the engine refuses together come back as `invalid_flags`.
//! - Transfer ids (`--id` of deposit, withdraw, transfer, post, void) default to a fresh
//!   random u128, printed as `transfer_id` with `--json`, so a script can query it later.
//! - `transfer` takes its ledger from `--ledger`, or else from the debit account (one query
//!   first).
//! - A deposit or withdraw answered `account_not_found` is followed by one query of the
//!   account: when the account exists, the missing one is the ledger's external account, and
//!   the hint on stderr gives the command that creates it.
//! - `account_exists` and `transfer_exists` (an idempotent retry) exit 1 like any non-`ok`
//!   result; scripts that re-run commands check the printed `result`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use client::{Client, ClientConfig, ClientError, Request, Response, ResultCode, Transfer};

/// Default node address (`tally node`'s default listen address).
pub const CONNECT_DEFAULT: &str = "127.0.0.1:7400";
/// Accounts per `accounts` page when `--limit` is not given.
pub const ACCOUNTS_LIMIT_DEFAULT: u16 = 100;

const EXIT_OK: u8 = 0;
const EXIT_REJECTED: u8 = 1;
const EXIT_ERROR: u8 = 2;

/// Send one command or query to a node and print the reply.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// The node's address (`tally node --listen`).
    #[arg(long, global = true, value_name = "ADDR:PORT", default_value = CONNECT_DEFAULT)]
    pub connect: SocketAddr,
    /// Print each reply as one JSON object on one line.
    #[arg(long, global = true)]
    pub json: bool,
    /// Wait per attempt, in milliseconds.
    #[arg(long, global = true, value_name = "MS", default_value_t = 2000)]
    pub timeout_ms: u64,
    /// Re-sends after the first attempt (same sequence number and transfer id: a retry is
    /// never applied twice).
    #[arg(long, global = true, value_name = "N", default_value_t = 3)]
    pub retries: u32,
    /// Where to receive replies (default: the interface that routes to the node, any port).
    #[arg(long, global = true, value_name = "ADDR:PORT")]
    pub reply_bind: Option<SocketAddr>,
    /// What to send.
    #[command(subcommand)]
    pub command: ClientCommand,
}

/// Account flags accepted by `create-account --flags`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountFlag {
    /// No overdraft: debits never exceed credits (the default without `--flags`).
    #[value(name = "debits_must_not_exceed_credits")]
    DebitsMustNotExceedCredits,
    /// Mirror rule: credits never exceed debits.
    #[value(name = "credits_must_not_exceed_debits")]
    CreditsMustNotExceedDebits,
    /// The ledger's external (world) account, used by deposit and withdraw.
    #[value(name = "external")]
    External,
    /// No balance rule at all.
    #[value(name = "overdraft")]
    Overdraft,
}

/// The commands and queries of `tally client`.
#[derive(Subcommand, Debug, Clone)]
pub enum ClientCommand {
    /// Create an account (no overdraft unless --flags says otherwise).
    CreateAccount {
        /// Account id (not 0).
        #[arg(long)]
        id: u64,
        /// Ledger (not 0).
        #[arg(long)]
        ledger: u32,
        /// Comma list replacing the default `debits_must_not_exceed_credits`.
        #[arg(long, value_enum, value_delimiter = ',')]
        flags: Option<Vec<AccountFlag>>,
        /// User-defined code.
        #[arg(long, default_value_t = 0)]
        code: u16,
    },
    /// Move money in from the ledger's external account.
    Deposit {
        /// Account credited.
        #[arg(long)]
        account: u64,
        /// Amount, in the ledger's smallest unit.
        #[arg(long)]
        amount: u64,
        /// Transfer id (default: random).
        #[arg(long)]
        id: Option<u128>,
    },
    /// Move money out to the ledger's external account.
    Withdraw {
        /// Account debited.
        #[arg(long)]
        account: u64,
        /// Amount, in the ledger's smallest unit.
        #[arg(long)]
        amount: u64,
        /// Transfer id (default: random).
        #[arg(long)]
        id: Option<u128>,
    },
    /// Transfer between two accounts of one ledger.
    Transfer {
        /// Transfer id (default: random).
        #[arg(long)]
        id: Option<u128>,
        /// Account debited.
        #[arg(long)]
        from: u64,
        /// Account credited.
        #[arg(long)]
        to: u64,
        /// Amount, in the ledger's smallest unit.
        #[arg(long)]
        amount: u64,
        /// Ledger (default: the debit account's).
        #[arg(long)]
        ledger: Option<u32>,
        /// Two-phase: reserve now, post or void later.
        #[arg(long)]
        pending: bool,
        /// Seconds of log time until a pending transfer expires (0 = never).
        #[arg(long, requires = "pending", default_value_t = 0)]
        timeout_s: u32,
        /// User-defined code.
        #[arg(long, default_value_t = 0)]
        code: u16,
    },
    /// Post (settle) a pending transfer, all of it or --amount.
    Post {
        /// The pending transfer.
        #[arg(long)]
        pending_id: u128,
        /// Id of the posting transfer (default: random).
        #[arg(long)]
        id: Option<u128>,
        /// Amount to post (default: all of it).
        #[arg(long)]
        amount: Option<u64>,
    },
    /// Void (release) a pending transfer.
    Void {
        /// The pending transfer.
        #[arg(long)]
        pending_id: u128,
        /// Id of the voiding transfer (default: random).
        #[arg(long)]
        id: Option<u128>,
    },
    /// Show one account.
    Account {
        /// Account id.
        id: u64,
        /// Answer once the node has applied this position (read your writes).
        #[arg(long, default_value_t = 0)]
        min_position: u64,
    },
    /// List accounts in id order, one page.
    Accounts {
        /// Only this ledger.
        #[arg(long)]
        ledger: Option<u32>,
        /// Ids greater than this (the last id of the previous page).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Accounts per page.
        #[arg(long, default_value_t = ACCOUNTS_LIMIT_DEFAULT)]
        limit: u16,
        /// Answer once the node has applied this position.
        #[arg(long, default_value_t = 0)]
        min_position: u64,
    },
    /// Show one transfer (retained, or pending while open)
    ///
    /// Answers for any transfer the node still retains for idempotency (the newest
    /// `transfers_retained_max`), and for a pending transfer until it is posted, voided or
    /// expired, however old.
    TransferGet {
        /// Transfer id.
        id: u128,
        /// Answer once the node has applied this position.
        #[arg(long, default_value_t = 0)]
        min_position: u64,
    },
    /// Show the node's role, positions, state hash and sessions.
    Status {
        /// Answer once the node has applied this position.
        #[arg(long, default_value_t = 0)]
        min_position: u64,
    },
}

/// Runs `tally client …`; returns the exit status (0 ok, 1 rejected, 2 error).
pub fn run(args: ClientArgs) -> ExitCode {
    let config = ClientConfig {
        reply_bind: args.reply_bind,
        timeout: Duration::from_millis(args.timeout_ms),
        retries: args.retries,
        ..ClientConfig::new(args.connect)
    };
    let mut client = match Client::connect(config) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let status = match execute(&mut client, &args) {
        Ok(status) => status,
        Err(e) => fail(&e),
    };
    client.close();
    status
}

fn fail(e: &ClientError) -> ExitCode {
    eprintln!("tally client: {e}");
    ExitCode::from(EXIT_ERROR)
}

/// The request for a command, with its transfer id when it has one. `debit_ledger` is the
/// debit account's ledger, looked up for `transfer` without `--ledger`.
fn request_of(
    command: &ClientCommand,
    debit_ledger: Option<u32>,
    client: &mut Client,
) -> (Request, Option<u128>) {
    let mut id_or_new = |id: &Option<u128>| id.unwrap_or_else(|| client.new_transfer_id());
    match command {
        ClientCommand::CreateAccount {
            id,
            ledger,
            flags,
            code,
        } => {
            let has = |f| flags.as_ref().is_some_and(|fs| fs.contains(&f));
            let request = Request::CreateAccount {
                id: *id,
                ledger: *ledger,
                debits_must_not_exceed_credits: flags.is_none()
                    || has(AccountFlag::DebitsMustNotExceedCredits),
                credits_must_not_exceed_debits: has(AccountFlag::CreditsMustNotExceedDebits),
                external: has(AccountFlag::External),
                code: *code,
            };
            (request, None)
        }
        ClientCommand::Deposit {
            account,
            amount,
            id,
        } => {
            let id = id_or_new(id);
            let request = Request::Deposit {
                id,
                account_id: *account,
                amount: *amount,
            };
            (request, Some(id))
        }
        ClientCommand::Withdraw {
            account,
            amount,
            id,
        } => {
            let id = id_or_new(id);
            let request = Request::Withdraw {
                id,
                account_id: *account,
                amount: *amount,
            };
            (request, Some(id))
        }
        ClientCommand::Transfer {
            id,
            from,
            to,
            amount,
            ledger,
            pending,
            timeout_s,
            code,
        } => {
            let id = id_or_new(id);
            let request = Request::Transfers {
                atomic: false,
                transfers: vec![Transfer {
                    id,
                    debit_account_id: *from,
                    credit_account_id: *to,
                    amount: *amount,
                    // 0 (refused as invalid_ledger) only if the lookup was skipped.
                    ledger: ledger.or(debit_ledger).unwrap_or(0),
                    pending: *pending,
                    timeout_s: *timeout_s,
                    code: *code,
                }],
            };
            (request, Some(id))
        }
        ClientCommand::Post {
            pending_id,
            id,
            amount,
        } => {
            let id = id_or_new(id);
            let request = Request::PostPending {
                id,
                pending_id: *pending_id,
                amount: *amount,
            };
            (request, Some(id))
        }
        ClientCommand::Void { pending_id, id } => {
            let id = id_or_new(id);
            let request = Request::VoidPending {
                id,
                pending_id: *pending_id,
            };
            (request, Some(id))
        }
        ClientCommand::Account { id, min_position } => (
            Request::GetAccount {
                id: *id,
                min_position: *min_position,
            },
            None,
        ),
        ClientCommand::Accounts {
            ledger,
            after,
            limit,
            min_position,
        } => (
            Request::ListAccounts {
                ledger: *ledger,
                after_id: *after,
                limit: *limit,
                min_position: *min_position,
            },
            None,
        ),
        ClientCommand::TransferGet { id, min_position } => (
            Request::GetTransfer {
                id: *id,
                min_position: *min_position,
            },
            None,
        ),
        ClientCommand::Status { min_position } => (
            Request::GetStatus {
                min_position: *min_position,
            },
            None,
        ),
    }
}

fn execute(client: &mut Client, args: &ClientArgs) -> Result<ExitCode, ClientError> {
    let mut debit_ledger = None;
    if let ClientCommand::Transfer {
        from, ledger: None, ..
    } = &args.command
    {
        let found = client.request(&Request::GetAccount {
            id: *from,
            min_position: 0,
        })?;
        match found {
            Response::Account {
                result: Some(ResultCode::Ok),
                account,
                ..
            } => debit_ledger = Some(account.ledger),
            other => {
                match other.result() {
                    Some(ResultCode::AccountNotFound) => eprintln!(
                        "tally client: the debit account {from} was not found \
                         (create it first, or give --ledger)"
                    ),
                    result => eprintln!(
                        "tally client: the lookup of the debit account {from}'s ledger was \
                         answered {} (retry, or give --ledger)",
                        result.map_or("with no result code", |r| r.name())
                    ),
                }
                return Ok(print(&other, None, args.json));
            }
        }
    }
    let (request, transfer_id) = request_of(&args.command, debit_ledger, client);
    let mut response = client.request(&request)?;
    if let (ClientCommand::Account { id, .. }, Response::Account { account, .. }) =
        (&args.command, &mut response)
    {
        // A refused query carries id 0: report the id that was asked for.
        account.account_id = *id;
    }
    let status = print(&response, transfer_id, args.json);
    if response.result() == Some(ResultCode::AccountNotFound) {
        if let ClientCommand::Deposit { account, .. } | ClientCommand::Withdraw { account, .. } =
            &args.command
        {
            hint_external(client, *account);
        }
    }
    Ok(status)
}

/// After a deposit/withdraw `account_not_found`: says which account is missing.
fn hint_external(client: &mut Client, account: u64) {
    let found = client.request(&Request::GetAccount {
        id: account,
        min_position: 0,
    });
    match found {
        Ok(Response::Account {
            result: Some(ResultCode::Ok),
            account: a,
            ..
        }) => eprintln!(
            "tally client: ledger {} has no external account; create it first: \
             tally client create-account --id ID --ledger {} --flags external",
            a.ledger, a.ledger
        ),
        _ => eprintln!(
            "tally client: account {account} does not exist; create it first: \
             tally client create-account --id {account} --ledger L"
        ),
    }
}

/// Prints a reply; returns the exit status its result means.
fn print(response: &Response, transfer_id: Option<u128>, json: bool) -> ExitCode {
    if json {
        let mut v = response.to_json();
        if let Some(id) = transfer_id {
            v["transfer_id"] = id.to_string().into();
        }
        println!("{v}");
    } else {
        println!("{}", human(response, transfer_id));
    }
    match response.result() {
        Some(ResultCode::Ok) => ExitCode::from(EXIT_OK),
        // Not a business answer: the node could not take the request in time.
        Some(ResultCode::Busy) => {
            eprintln!(
                "tally client: the node stayed busy (overloaded) through every retry; \
                 nothing was applied: try again, or raise --timeout-ms/--retries"
            );
            ExitCode::from(EXIT_ERROR)
        }
        Some(ResultCode::NotReady) => {
            eprintln!(
                "tally client: the node had not applied --min-position in time; \
                 try again, or raise --timeout-ms/--retries"
            );
            ExitCode::from(EXIT_ERROR)
        }
        _ => ExitCode::from(EXIT_REJECTED),
    }
}

fn result_name(result: Option<ResultCode>) -> &'static str {
    result.map_or("unknown", |c| c.name())
}

fn balance_line(b: &client::Balance) -> String {
    format!(
        "account {} ledger {}: balance {} (credits_posted {}, debits_posted {}, credits_pending {}, debits_pending {})",
        b.account_id,
        b.ledger,
        b.balance(),
        b.credits_posted,
        b.debits_posted,
        b.credits_pending,
        b.debits_pending
    )
}

/// A short human-readable rendering of a reply.
fn human(response: &Response, transfer_id: Option<u128>) -> String {
    match response {
        Response::Command {
            position,
            result,
            results,
            balances,
            ..
        } => {
            let mut out = format!("{} at position {position}", result_name(*result));
            if let Some(id) = transfer_id {
                out.push_str(&format!(", transfer {id}"));
            }
            if results.iter().any(|r| *r != Some(ResultCode::Ok)) {
                let names: Vec<&str> = results.iter().map(|r| result_name(*r)).collect();
                out.push_str(&format!(" (per transfer: {})", names.join(", ")));
            }
            for b in balances {
                out.push_str("\n  ");
                out.push_str(&balance_line(b));
            }
            out
        }
        Response::Account {
            position,
            result: Some(ResultCode::Ok),
            account,
            ..
        } => format!("{} (position {position})", balance_line(account)),
        Response::Account {
            position,
            result,
            account,
            ..
        } => format!(
            "{}: account {} (position {position})",
            result_name(*result),
            account.account_id
        ),
        Response::Accounts {
            position,
            result,
            accounts,
        } => {
            let mut out = format!(
                "{}: {} accounts (position {position})",
                result_name(*result),
                accounts.len()
            );
            for b in accounts {
                out.push_str("\n  ");
                out.push_str(&balance_line(b));
            }
            if let Some(last) = accounts.last() {
                out.push_str(&format!("\nnext page: --after {}", last.account_id));
            }
            out
        }
        Response::Transfer {
            position,
            result,
            fields,
        } => {
            if *result != Some(ResultCode::Ok) {
                return format!("{} (position {position})", result_name(*result));
            }
            let mut out = format!("transfer (position {position}):");
            if let Some(map) = fields.as_object() {
                for (k, v) in map {
                    out.push_str(&format!(
                        " {k}={}",
                        v.as_str().map_or(v.to_string(), str::to_string)
                    ));
                }
            }
            out
        }
        Response::Status {
            role,
            position,
            durable_position,
            state_hash,
            sessions,
            node,
        } => format!(
            "{role} {node}: position {position}, durable_position {durable_position}, \
             state_hash {state_hash:016x}, sessions {sessions}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ClientArgs,
    }

    fn parse(argv: &[&str]) -> Result<ClientArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("client").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn defaults_are_the_local_node_two_seconds_and_three_retries() {
        let a = parse(&["status"]).unwrap();
        assert_eq!(a.connect, CONNECT_DEFAULT.parse::<SocketAddr>().unwrap());
        assert_eq!((a.timeout_ms, a.retries, a.json), (2000, 3, false));
    }

    #[test]
    fn global_flags_may_follow_the_subcommand() {
        let a = parse(&["account", "7", "--json", "--connect", "10.0.0.1:9"]).unwrap();
        assert!(a.json);
        assert_eq!(a.connect, "10.0.0.1:9".parse::<SocketAddr>().unwrap());
        assert!(matches!(a.command, ClientCommand::Account { id: 7, .. }));
    }

    #[test]
    fn flags_parse_as_a_comma_list_and_unknown_ones_are_usage_errors() {
        let a = parse(&[
            "create-account",
            "--id",
            "1",
            "--ledger",
            "2",
            "--flags",
            "external",
        ])
        .unwrap();
        let ClientCommand::CreateAccount { flags, .. } = a.command else {
            panic!("expected create-account");
        };
        assert_eq!(flags, Some(vec![AccountFlag::External]));
        let e = parse(&[
            "create-account",
            "--id",
            "1",
            "--ledger",
            "2",
            "--flags",
            "nope",
        ])
        .err()
        .unwrap();
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn timeout_s_requires_pending() {
        let e = parse(&[
            "transfer",
            "--from",
            "1",
            "--to",
            "2",
            "--amount",
            "3",
            "--timeout-s",
            "5",
        ])
        .err()
        .unwrap();
        assert_eq!(e.exit_code(), 2);
        assert!(parse(&[
            "transfer",
            "--from",
            "1",
            "--to",
            "2",
            "--amount",
            "3",
            "--pending",
            "--timeout-s",
            "5"
        ])
        .is_ok());
    }

    #[test]
    fn human_lines_name_the_result_and_the_balance() {
        let r = Response::Command {
            position: 4,
            timestamp_ns: 0,
            client_seq: 1,
            result: Some(ResultCode::InsufficientFunds),
            result_raw: 20,
            results: vec![],
            balances: vec![client::Balance {
                account_id: 10,
                ledger: 1,
                credits_posted: 500,
                debits_posted: 200,
                ..client::Balance::default()
            }],
        };
        let text = human(&r, Some(9));
        assert!(
            text.starts_with("insufficient_funds at position 4, transfer 9"),
            "{text}"
        );
        assert!(text.contains("account 10 ledger 1: balance 300"), "{text}");
    }
}
