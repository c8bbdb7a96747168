//! Turning schema names into Rust identifiers.
//!
//! Schema names may hold spaces, punctuation, leading digits or Rust keywords
//! (`error-handler-invalid-name.xml`); every function here returns a valid identifier.

/// Rust keywords (strict and reserved) that cannot be plain identifiers.
const KEYWORDS: &[&str] = &[
    "as", "break", "const", "continue", "crate", "else", "enum", "extern", "false", "fn", "for",
    "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return",
    "self", "Self", "static", "struct", "super", "trait", "true", "type", "unsafe", "use", "where",
    "while", "async", "await", "dyn", "abstract", "become", "box", "do", "final", "macro",
    "override", "priv", "typeof", "unsized", "virtual", "yield", "try", "gen", "union",
];

/// Splits a name into lowercase words at case changes, digits boundaries and non-alphanumerics.
fn words(name: &str) -> Vec<String> {
    let chars: Vec<char> = name.chars().collect();
    let mut out = Vec::new();
    let mut cur = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_ascii_alphanumeric() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if c.is_ascii_uppercase() && !cur.is_empty() {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            if prev.is_ascii_lowercase()
                || prev.is_ascii_digit()
                || (prev.is_ascii_uppercase() && next_lower)
            {
                out.push(std::mem::take(&mut cur));
            }
        }
        cur.push(c.to_ascii_lowercase());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn fix(ident: String, prefix: &str) -> String {
    let ident = if ident.is_empty() {
        format!("{prefix}unnamed")
    } else if ident.starts_with(|c: char| c.is_ascii_digit()) {
        format!("{prefix}{ident}")
    } else {
        ident
    };
    if KEYWORDS.contains(&ident.as_str()) {
        format!("{ident}_")
    } else {
        ident
    }
}

/// `debitAccountId` -> `debit_account_id`.
pub fn snake(name: &str) -> String {
    fix(words(name).join("_"), "f_")
}

/// `groupSizeEncoding` -> `GroupSizeEncoding`.
pub fn camel(name: &str) -> String {
    let s: String = words(name)
        .iter()
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect();
    fix(s, "V")
}

/// `debitsMustNotExceedCredits` -> `DEBITS_MUST_NOT_EXCEED_CREDITS`.
pub fn shouty(name: &str) -> String {
    fix(words(name).join("_").to_ascii_uppercase(), "C_")
}

/// Makes names unique by appending `_2`, `_3`, ... to repeats.
pub fn dedupe(names: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    names
        .into_iter()
        .map(|n| {
            let mut candidate = n.clone();
            let mut i = 2;
            while !seen.insert(candidate.clone()) {
                candidate = format!("{n}_{i}");
                i += 1;
            }
            candidate
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_valid_identifiers() {
        assert_eq!(snake("debitAccountId"), "debit_account_id");
        assert_eq!(snake("MDEntryPx"), "md_entry_px");
        assert_eq!(snake("invalid field name"), "invalid_field_name");
        assert_eq!(snake("type"), "type_");
        assert_eq!(snake("1st"), "f_1st");
        assert_eq!(camel("groupSizeEncoding"), "GroupSizeEncoding");
        assert_eq!(camel("insufficient_funds"), "InsufficientFunds");
        assert_eq!(camel("Self"), "Self_");
        assert_eq!(
            shouty("debits_must_not_exceed_credits"),
            "DEBITS_MUST_NOT_EXCEED_CREDITS"
        );
        assert_eq!(camel("Id128"), "Id128");
    }
}
