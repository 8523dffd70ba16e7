// SPDX-License-Identifier: Apache-2.0
//! How the VMM prints an error: one line, each cause once, outermost first.
//!
//! Errors are typed enums whose messages do not repeat their source; the chain of sources is
//! joined here, for stderr and for QMP `desc` texts alike.

/// Formats an error and its chain of sources as one line: `outer: cause: root cause`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("Cannot open the image")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn joins_each_cause_once() {
        let e = Outer(std::io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(
            chain(&e),
            "Cannot open the image: No such file or directory (os error 2)"
        );
    }
}
