//! What per-invocation values (webhook, event and schedule env) may travel in a work message.
//! Here, below both [`crate::message`] (which re-exports it) and this module's validation (a
//! function's own env may not take a per-invocation name), so neither imports upward for it.

/// The longest per-invocation value (`GRANDA_WEBHOOK_*`, `GRANDA_EVENT_*`, `GRANDA_CONTENT_TYPE`).
pub(crate) const MAX_INVOCATION_VALUE: usize = 1024;

/// Whether `s` travels unchanged as an HTTP header value (a hot function gets per-invocation
/// values as headers) and as a process env value: printable ASCII, space to `~`, so no control
/// character, CR, LF, DEL or non-ASCII byte.
pub(crate) fn header_safe(s: &str) -> bool {
    s.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// Why a per-invocation env entry can't travel: `None` when it can. Names are `GRANDA_` plus
/// `[A-Z0-9_]`; values are [`header_safe`] and at most [`MAX_INVOCATION_VALUE`] bytes.
pub(crate) fn invocation_env_problem(name: &str, value: &str) -> Option<String> {
    let name_ok = name.strip_prefix("GRANDA_").is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    });
    if !name_ok {
        return Some(format!("{name:?} is not a per-invocation variable name"));
    }
    if value.len() > MAX_INVOCATION_VALUE {
        return Some(format!("{name}: longer than {MAX_INVOCATION_VALUE} bytes"));
    }
    if !header_safe(value) {
        return Some(format!(
            "{name}: only printable ASCII (no control characters, CR or LF)"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_invocation_values_are_printable_ascii() {
        assert!(header_safe("push") && header_safe("a b/c;d=e") && header_safe(""));
        for bad in ["a\u{1}b", "a\r\nX-Injected: 1", "tab\t", "del\u{7f}", "é"] {
            assert!(!header_safe(bad), "{bad:?}");
            assert!(invocation_env_problem("GRANDA_WEBHOOK_EVENT", bad).is_some());
        }
        assert!(invocation_env_problem("GRANDA_WEBHOOK_EVENT", "push").is_none());
        assert!(invocation_env_problem("GRANDA_X", &"a".repeat(1025)).is_some());
        for bad_name in ["PATH", "GRANDA_", "GRANDA_a", "GRANDA_X-Y", "GRANDA_X\r\n"] {
            assert!(
                invocation_env_problem(bad_name, "v").is_some(),
                "{bad_name}"
            );
        }
    }
}
